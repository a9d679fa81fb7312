"""Build one feature file in chunks that survive an interruption, and skip it when it is already done.

Encoding 100k+ items on a CPU takes long enough to be interrupted. Each finished chunk is saved under
``<file>.parts/``; a re-run with the same inputs reuses those chunks and a finished file is not rebuilt
at all. "Same inputs" is a fingerprint (encoder, settings, a hash of the exact texts or image files),
stored in the ``<file>.json`` report beside the feature file.
"""
import hashlib
import json
import os
import shutil
import time

import numpy as np
from tqdm.auto import tqdm

from recbole_missrec.atomic import atomic_open
from recbole_missrec.data.feature_file import write_feature_file, write_multi_vector_file

from dataset_preprocess.layout import atomic_write_json, read_json


def fingerprint(**inputs):
    """Stable digest of everything that determines a feature file's content."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def digest(strings):
    """Digest of a long list of strings (texts, item ids), for :func:`fingerprint`."""
    sha = hashlib.sha256()
    for value in strings:
        sha.update(str(value).encode("utf-8"))
        sha.update(b"\0")
    return sha.hexdigest()


def is_done(path, key, companions=()):
    """The file (and every companion file written with it) exists, its report carries ``key`` and its size
    matches the report (``bytes``, or rows x dim float32 for a raw table)."""
    report_path = path + ".json"
    if not all(os.path.isfile(name) for name in (path, report_path, *companions)):
        return False
    report = read_json(report_path)
    size = report.get("bytes", 4 * report["rows"] * report["dim"])
    return report.get("fingerprint") == key and os.path.getsize(path) == size


def _save_part(path, arrays, report):
    """The chunk's arrays and report go into one .npz renamed into place: a part is whole or absent."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, report=np.array(json.dumps(report)), **arrays)


def _load_part(path):
    with np.load(path) as part:
        arrays = {name: part[name] for name in part.files if name != "report"}
        return arrays, json.loads(str(part["report"]))


def _parts_folder(path, key, force):
    """The chunk folder for this fingerprint; chunks of other inputs are thrown away."""
    folder = path + ".parts"
    marker = os.path.join(folder, "fingerprint")
    if os.path.isdir(folder):
        stale = force or not os.path.isfile(marker) or open(marker, encoding="utf-8").read() != key
        if stale:
            shutil.rmtree(folder)
    if not os.path.isdir(folder):
        os.makedirs(folder)
        with open(marker, "w", encoding="utf-8") as handle:
            handle.write(key)
    return folder


def _encode_in_chunks(path, key, n_rows, encode_chunk, chunk_size, force, show_progress, description):
    """Every chunk's (arrays, report), from ``<path>.parts/`` when saved there, else encoded and saved.

    Returns (arrays per chunk, reports per chunk, items encoded by this call, seconds spent encoding).
    """
    folder = _parts_folder(path, key, force)
    bounds = [(start, min(start + chunk_size, n_rows)) for start in range(0, n_rows, chunk_size)]
    arrays, reports, encoded, seconds = [], [], 0, 0.0
    with tqdm(total=n_rows, desc=description, unit="item", disable=not show_progress) as bar:
        for start, stop in bounds:
            part = os.path.join(folder, f"part-{start:010d}-{stop:010d}.npz")
            if os.path.isfile(part):
                chunk, report = _load_part(part)
            else:
                began = time.perf_counter()
                chunk, report = encode_chunk(start, stop)
                seconds += time.perf_counter() - began
                encoded += stop - start
                _save_part(part, chunk, report)
            arrays.append(chunk)
            reports.append(report)
            bar.update(stop - start)
    if not arrays:
        raise ValueError(f"{path}: nothing to encode (0 items)")
    return arrays, reports, encoded, seconds


def _speed(encoded, seconds):
    return {"encoded_this_run": encoded, "encode_seconds": round(seconds, 2),
            "items_per_second": round(encoded / seconds, 1) if seconds else None}


def _publish_report(path, report):
    """The report is written last: it marks the file as done (:func:`is_done`); the chunks go after it."""
    atomic_write_json(path + ".json", report)
    shutil.rmtree(path + ".parts")
    return {**report, "skipped": False}


def build_feature_file(path, key, n_rows, encode_chunk, summarise, chunk_size=2048, force=False,
                       show_progress=True, description="features", details=None):
    """Write ``path`` ([n_rows, dim] float32) unless it is already done; return its report.

    ``encode_chunk(start, stop)`` returns (table [stop-start, dim], JSON-able chunk report);
    ``summarise(chunk reports)`` folds them into the file's report; ``details`` (e.g. the encoder name)
    is stored with it. The report says whether this call skipped the file and how fast it encoded.
    """
    if not force and is_done(path, key):
        return {**read_json(path + ".json"), "skipped": True}

    def encode_table(start, stop):
        table, report = encode_chunk(start, stop)
        return {"table": np.asarray(table, dtype=np.float32)}, report

    arrays, reports, encoded, seconds = _encode_in_chunks(path, key, n_rows, encode_table, chunk_size, force,
                                                          show_progress, description)
    table = np.concatenate([chunk["table"] for chunk in arrays])
    write_feature_file(path, table)
    return _publish_report(path, {
        **(details or {}),
        "fingerprint": key,
        "rows": int(table.shape[0]),
        "dim": int(table.shape[1]),
        "nonzero_rows": int(table.any(axis=1).sum()),
        **_speed(encoded, seconds),
        **summarise(reports),
    })


def build_multi_vector_file(path, key, items, encode_chunk, summarise, chunk_size=2048, force=False,
                            show_progress=True, description="features", details=None, companions=None):
    """Write the multi-vector ``.npz`` ``path`` for ``items`` (the item tokens) unless it is already done.

    ``encode_chunk(start, stop)`` returns ({"vectors": [T, dim] float32, "counts": [stop-start] int64, any
    other arrays}, JSON-able chunk report): item ``start + i`` owns the next ``counts[i]`` vectors (0 = the
    item lacks the modality). ``companions``: {path: write(arrays of every chunk, in order)} for files
    derived from the same chunks (e.g. a readable listing), written before the report that marks the
    work as done. Returns the file's report (``items``, ``vectors``, vectors per item, speed).
    """
    companions = companions or {}
    if not force and is_done(path, key, companions):
        return {**read_json(path + ".json"), "skipped": True}
    arrays, reports, encoded, seconds = _encode_in_chunks(path, key, len(items), encode_chunk, chunk_size, force,
                                                          show_progress, description)
    vectors = np.concatenate([chunk["vectors"] for chunk in arrays]).astype(np.float32, copy=False)
    counts = np.concatenate([chunk["counts"] for chunk in arrays]).astype(np.int64)
    if len(counts) != len(items) or counts.sum() != len(vectors):
        raise ValueError(f"{path}: the chunks hold {counts.sum()} vectors for {len(counts)} items, "
                         f"expected {len(items)} items")
    write_multi_vector_file(path, items, np.split(vectors, np.cumsum(counts)[:-1]))
    for companion, write in companions.items():
        write(companion, arrays)
    with_vectors = counts[counts > 0]
    return _publish_report(path, {
        **(details or {}),
        "fingerprint": key,
        "format": "multi-vector npz",
        "bytes": os.path.getsize(path),
        "rows": len(items),
        "dim": int(vectors.shape[1]),
        "vectors": int(len(vectors)),
        "nonzero_rows": int(len(with_vectors)),
        "vectors_per_item": {"mean": round(float(with_vectors.mean()), 3) if len(with_vectors) else 0.0,
                             "max": int(with_vectors.max()) if len(with_vectors) else 0},
        **_speed(encoded, seconds),
        **summarise(reports),
    })
