"""Multi-domain pre-training set: several domains merged into one dataset folder (reference §2.5).

Each domain keeps its own filtering and leave-one-out split; the merge only renames. Original ids get
the domain's position as prefix (``"0-<orig>"``, ``"1-<orig>"``) in ``.item2index``/``.user2index``;
indices run contiguously over the domains in the given order, so each domain's feature table is one
block of the merged table. A feature file is merged when at least one domain has it (domains without
it contribute zero rows, i.e. the modality is missing) and left out when none has it: text-only
domains give a merged set without ``.feat3CLS``. ``<NAME>.pt_datasets`` lists the domains in order.
"""
import os
import time
from dataclasses import dataclass
from itertools import chain

import numpy as np

from recbole_missrec.data.feature_file import read_feature_file, write_feature_file

from dataset_preprocess.interactions import filter_and_index
from dataset_preprocess.layout import (
    BENCHMARK_HEADER, FEATURE_SUFFIXES, INTER_HEADER, SPLITS, TEXT_HEADER, atomic_write_json, atomic_write_lines,
    benchmark_line, dataset_file, dataset_name, feature_dim, is_processed, one_line, read_benchmark,
    read_index, read_json, read_texts, write_dataset,
)
from dataset_preprocess.stats import write_statistics
from dataset_preprocess.tables import atomic_folder, read_interaction_table, read_item_text_table


@dataclass
class Domain:
    """One processed domain and where its indices start in the merged set."""

    position: int
    name: str
    folder: str
    items: list
    users: list
    item_offset: int
    user_offset: int

    def file(self, suffix):
        return dataset_file(self.folder, self.name, suffix)


def _already_prepared(folder, name, settings):
    """Processed earlier with the same source and settings (the stats file is written last)."""
    stats = dataset_file(folder, name, "stats.json")
    if not (is_processed(folder, name) and os.path.isfile(stats)):
        return False
    provenance = read_json(stats).get("provenance") or {}
    return all(provenance.get(key) == value for key, value in settings.items())


def prepare_domain(source, work_dir, min_count=5, max_history=50):
    """(folder, name) of a processed domain; an atomic folder (``<d>.inter`` + ``<d>.item`` with a title
    column) is first run through the same pipeline as raw data, into ``<work_dir>/<d>``, once."""
    name = dataset_name(source)
    if is_processed(source, name):
        return source, name
    name, inter_path, item_path = atomic_folder(source)
    target = os.path.join(work_dir, name)
    settings = {"source": os.path.abspath(source), "min_count": min_count, "max_history": max_history}
    if _already_prepared(target, name, settings):
        return target, name
    began = time.perf_counter()
    data, stages = filter_and_index(read_interaction_table(inter_path), read_item_text_table(item_path), min_count)
    write_dataset(data, target, name, max_history)
    write_statistics(target, name, {**settings, "text": "title", "stages": stages,
                                    "seconds": round(time.perf_counter() - began, 1)})
    return target, name


def _domains(prepared):
    domains, item_offset, user_offset = [], 0, 0
    for position, (folder, name) in enumerate(prepared):
        items = read_index(dataset_file(folder, name, "item2index"))
        users = read_index(dataset_file(folder, name, "user2index"))
        domains.append(Domain(position, name, folder, items, users, item_offset, user_offset))
        item_offset += len(items)
        user_offset += len(users)
    return domains


def _shift(index, offset, limit, path):
    if not 0 <= index < limit:
        raise ValueError(f"{path}: token {index} outside the domain's index 0..{limit - 1}")
    return index + offset


def _benchmark_rows(domain, split):
    path = domain.file(f"{split}.inter")
    n_users, n_items = len(domain.users), len(domain.items)
    for user, history, target in read_benchmark(path):
        yield benchmark_line(_shift(user, domain.user_offset, n_users, path),
                             [_shift(item, domain.item_offset, n_items, path) for item in history],
                             _shift(target, domain.item_offset, n_items, path))


def _inter_rows(domain):
    path = domain.file("inter")
    n_users, n_items = len(domain.users), len(domain.items)
    with open(path, encoding="utf-8") as handle:
        next(handle, None)
        for line in handle:
            if line.strip():
                user, item, timestamp = line.rstrip("\n").split("\t")
                yield (f"{_shift(int(user), domain.user_offset, n_users, path)}\t"
                       f"{_shift(int(item), domain.item_offset, n_items, path)}\t{timestamp}")


def _text_rows(domain):
    texts = read_texts(domain.file("text")) if os.path.isfile(domain.file("text")) else {}
    return (f"{domain.position}-{item}\t{one_line(texts.get(item, ''))}" for item in domain.items)


def _remove_stale(*paths):
    """A file left by an earlier merge that this one does not write would disagree with the new indices."""
    for path in paths:
        if os.path.isfile(path):
            os.remove(path)


def merge_features(domains, output_dir, name):
    """Concatenate each feature file over the domains; returns {suffix: which domains were zero-filled}."""
    merged = {}
    for suffix in FEATURE_SUFFIXES:
        present = [domain for domain in domains if os.path.isfile(domain.file(suffix))]
        if not present:
            _remove_stale(dataset_file(output_dir, name, suffix), dataset_file(output_dir, name, suffix) + ".json")
            continue
        dims = {domain.name: feature_dim(domain.file(suffix), len(domain.items)) for domain in present}
        if len(set(dims.values())) > 1:
            raise ValueError(f"{suffix} files of different widths cannot be merged: {dims}")
        dim = next(iter(dims.values()))
        blocks = [
            read_feature_file(domain.file(suffix), dim, min_rows=len(domain.items))[:len(domain.items)]
            if domain.name in dims else np.zeros((len(domain.items), dim), dtype=np.float32)
            for domain in domains
        ]
        path = dataset_file(output_dir, name, suffix)
        write_feature_file(path, np.concatenate(blocks))
        zero_filled = [domain.name for domain in domains if domain.name not in dims]
        sources = {domain.name: read_json(domain.file(suffix) + ".json").get("model")
                   if os.path.isfile(domain.file(suffix) + ".json") else None for domain in present}
        atomic_write_json(path + ".json", {"kind": "merged", "dim": dim, "rows": sum(map(len, blocks)),
                                           "models": sources, "zero_filled": zero_filled})
        merged[suffix] = zero_filled
    return merged


def merge_domains(prepared, output_dir, name):
    """Write the merged folder from processed domains [(folder, name), ...]; returns its statistics."""
    domains = _domains(prepared)
    atomic_write_lines(dataset_file(output_dir, name, "item2index"),
                       (f"{d.position}-{item}\t{d.item_offset + index}" for d in domains
                        for index, item in enumerate(d.items)))
    atomic_write_lines(dataset_file(output_dir, name, "user2index"),
                       (f"{d.position}-{user}\t{d.user_offset + index}" for d in domains
                        for index, user in enumerate(d.users)))
    atomic_write_lines(dataset_file(output_dir, name, "text"),
                       chain([TEXT_HEADER], *(_text_rows(d) for d in domains)))
    for split in SPLITS:
        atomic_write_lines(dataset_file(output_dir, name, f"{split}.inter"),
                           chain([BENCHMARK_HEADER], *(_benchmark_rows(d, split) for d in domains)))
    plain = dataset_file(output_dir, name, "inter")
    if all(os.path.isfile(d.file("inter")) for d in domains):
        atomic_write_lines(plain, chain([INTER_HEADER], *(_inter_rows(d) for d in domains)))
    else:
        _remove_stale(plain)
    zero_filled = merge_features(domains, output_dir, name)
    atomic_write_lines(dataset_file(output_dir, name, "pt_datasets"), [",".join(d.name for d in domains)])
    provenance = {
        "domains": [
            {"position": d.position, "name": d.name, "folder": os.path.abspath(d.folder), "items": len(d.items),
             "users": len(d.users), "item_offset": d.item_offset, "user_offset": d.user_offset,
             "stats": _domain_stats(d)}
            for d in domains
        ],
        "zero_filled_features": zero_filled,
    }
    return write_statistics(output_dir, name, provenance)


def _domain_stats(domain):
    path = domain.file("stats.json")
    if not os.path.isfile(path):
        return None
    stats = read_json(path)
    return {key: stats[key] for key in ("users", "items", "interactions", "average_length")}


def merge_pretrain(sources, output_dir, name=None, work_dir=None, min_count=5, max_history=50, text_options=None):
    """Sources (atomic or processed folders) -> processed domains -> text features per domain (when
    ``text_options`` is given: keyword arguments of ``features.build_text_features``) -> merged folder.

    Every stage skips what an earlier run finished, so an interrupted run is simply started again.
    Returns (statistics, seconds per stage).
    """
    name = name or dataset_name(output_dir)
    work_dir = work_dir or os.path.join(output_dir, "domains")
    timings = {}
    began = time.perf_counter()
    prepared = [prepare_domain(source, work_dir, min_count, max_history) for source in sources]
    timings["interactions"] = round(time.perf_counter() - began, 1)
    if text_options is not None:
        from dataset_preprocess.features import build_text_features

        began = time.perf_counter()
        for folder, domain_name in prepared:
            build_text_features(folder, domain_name, **text_options)
            write_statistics(folder, domain_name)
        timings["text_features"] = round(time.perf_counter() - began, 1)
    began = time.perf_counter()
    stats = merge_domains(prepared, output_dir, name)
    timings["merge"] = round(time.perf_counter() - began, 1)
    return stats, timings
