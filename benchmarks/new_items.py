"""Cold-start protocol (b), new items: the held-out split and the ranking of the test rows afterwards.

The split (``make_split``) draws a seeded share of the items that occur in the dataset's benchmark files
(targets and histories of train, valid and test). The derived dataset (``write_derived``) is what the models
train on: train and valid rows whose target is held out are dropped, held-out items leave every train and
valid history (a row whose history becomes empty is dropped), and the test file keeps only the rows that
touch no held-out item, because RecBole maps every item of the three files: a held-out item there would get
an ID row and, in MISSRec, a token in interest discovery. Every other ``<name>.*`` file of the source
(features, ``.item2index``, ``.text``) is linked under the derived name; raw feature rows are indexed by
token, so the held-out rows stay in the files but are never read in training.

Items of the source that the derived files lose without being held out (their every row was a dropped test
row) are ``vanished``: they are added after training with the held-out ones, so that ranking is always over
the whole catalogue, but they are never evaluation targets.

Afterwards (``plugin_top_k``, ``sasrec_top_k``) the trained model gets every missing item, and the top-K of
the given histories is computed: a plugin model through the serving API (export a bundle, ``add_items``
from the source's feature rows, ``Recommender.recommend``), SASRec by appending ID rows initialised as SASRec
initialises them, N(0, initializer_range), which training never saw: the floor of an ID-only model.
"""
import os
import sys
import tempfile
from contextlib import contextmanager
from unittest import mock

import numpy as np
import torch

from recbole_missrec.atomic import atomic_open

PARTS = ("train", "valid", "test")
HISTORY, TARGET, USER = "item_id_list", "item_id", "user_id"  # the benchmark layout's columns


class Split:
    """A benchmark file: its header fields and rows (every column kept as text), the history and target
    columns located."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        self.header = lines[0].split("\t")
        names = [field.split(":")[0] for field in self.header]
        if HISTORY not in names or TARGET not in names:
            raise SystemExit(f"{path}: the new-items protocol reads the benchmark layout ({HISTORY}:token_seq and "
                             f"{TARGET}:token columns); the header is {lines[0]!r}")
        self.history, self.target = names.index(HISTORY), names.index(TARGET)
        self.user = names.index(USER) if USER in names else None
        self.rows = [line.split("\t") for line in lines[1:] if line.strip()]

    def items(self, row):
        """(history tokens, target token) of a row."""
        return row[self.history].split(), row[self.target]

    def write(self, path, rows):
        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.write("\t".join(self.header) + "\n")
            handle.writelines("\t".join(row) + "\n" for row in rows)


def read_parts(folder, name):
    return {part: Split(os.path.join(folder, f"{name}.{part}.inter")) for part in PARTS}


def tokens_of(parts):
    """Every item token of the files, histories and targets."""
    found = set()
    for split in parts.values():
        for row in split.rows:
            history, target = split.items(row)
            found.update(history)
            found.add(target)
    return found


def token_order(tokens):
    """Tokens sorted as integers when they all are (the benchmark files' index tokens), else as text."""
    tokens = list(tokens)
    numeric = all(token.isdigit() for token in tokens)
    return sorted(tokens, key=int if numeric else str)


def choose_share(tokens, share, seed):
    """A seeded random ``share`` of the tokens (rounded, at least one), in token order."""
    ordered = token_order(tokens)
    count = max(1, round(share * len(ordered)))
    chosen = np.random.default_rng(seed).choice(len(ordered), size=count, replace=False)
    return token_order(ordered[i] for i in chosen)


def derived_rows(parts, held):
    """{part: rows of the derived file}: train/valid rows with a held-out target dropped and held-out items
    removed from their histories (rows left with no history dropped); test rows kept only when no item of
    theirs is held out."""
    held = set(held)
    out = {}
    for part, split in parts.items():
        rows = []
        for row in split.rows:
            history, target = split.items(row)
            if target in held:
                continue
            kept = [item for item in history if item not in held]
            if part == "test" and len(kept) < len(history):
                continue
            if kept:
                rows.append(row[:split.history] + [" ".join(kept)] + row[split.history + 1:])
        out[part] = rows
    return out


def row_counts(parts, rows):
    """{part: {"source": rows of the source file, "derived": rows of the derived one}}, as split records keep."""
    return {part: {"source": len(parts[part].rows), "derived": len(rows[part])} for part in PARTS}


def make_split(parts, share, seed):
    """The held-out items, the derived rows and the counts the results record."""
    source_tokens = tokens_of(parts)
    held = choose_share(source_tokens, share, seed)
    rows = derived_rows(parts, held)
    derived_tokens = set()
    for part, split in parts.items():
        for row in rows[part]:
            history, target = split.items(row)
            derived_tokens.update(history)
            derived_tokens.add(target)
    vanished = token_order(source_tokens - derived_tokens - set(held))
    test = parts["test"]
    evaluated = [test.items(row) for row in test.rows if test.items(row)[1] in set(held)]
    counts = {
        "items": len(source_tokens), "held_out": len(held), "trained_items": len(derived_tokens),
        "vanished": len(vanished),
        "rows": row_counts(parts, rows),
        "new_item_rows": len(evaluated),
        "new_item_rows_with_held_out_history": sum(bool(set(history) & set(held)) for history, _ in evaluated),
    }
    return {"held_out": held, "vanished": vanished, "counts": counts}, rows


def write_derived(source_folder, name, folder, parts, rows):
    """The derived dataset in ``folder`` (named as the folder): its three benchmark files written, every other
    ``<name>.*`` file of the source linked under the new name."""
    new_name = os.path.basename(folder)
    os.makedirs(folder, exist_ok=True)
    for part, split in parts.items():
        split.write(os.path.join(folder, f"{new_name}.{part}.inter"), rows[part])
    inter_files = {f"{name}.{part}.inter" for part in PARTS}
    for entry in sorted(os.listdir(source_folder)):
        if entry.startswith(f"{name}.") and entry not in inter_files:
            link = os.path.join(folder, new_name + entry[len(name):])
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.join(os.path.abspath(source_folder), entry), link)


def cases_of(split, keep):
    """(histories, targets) of a benchmark file's rows whose target passes ``keep``."""
    chosen = [split.items(row) for row in split.rows if keep(split.items(row)[1])]
    return [history for history, _ in chosen], [target for _, target in chosen]


@contextmanager
def quiet_argv():
    """RecBole's Config reads ``--key=value`` from sys.argv: the benchmark's own options must not reach it."""
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        yield


# ---- top-K after the missing items are added ---------------------------------------------------------
def feature_rows(recommender, source_files, tokens):
    """{store: FeatureStore of ``tokens``' rows} read from the feature files the model was trained from (as
    ``read_store`` reads them; the bundle applies its feature_norm when they are added)."""
    from recbole_missrec.data.feature_store import read_store
    from recbole_missrec.serving.recommender import store_rows

    max_slots = recommender.config["max_feature_slots"]
    return {name: store_rows(read_store(source_files[name], store.dim, np.array(tokens), max_slots), 1)
            for name, store in recommender.stores.items()}


def plugin_top_k(checkpoint, data_path, new_tokens, cases, k, work):
    """A plugin model's top-``k`` tokens for every history of every case set ({name: histories}) after the
    ``new_tokens`` join through ``add_items``; and the model's note. The bundle is temporary."""
    from recbole_missrec.serving.bundle import export_bundle
    from recbole_missrec.serving.recommender import Recommender

    os.makedirs(work, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as folder, quiet_argv():
        manifest = export_bundle(checkpoint, os.path.join(folder, "bundle"), data_path)
        recommender = Recommender.load(os.path.join(folder, "bundle"))
    note = recommender.add_items(new_tokens, feature_rows(recommender, manifest["source"]["feature_files"], new_tokens))
    top = {name: [result["items"] for result in recommender.recommend(histories, k=k)]
           for name, histories in cases.items()}
    return top, note


def grow_item_embedding(model, count, generator):
    """``count`` more ID rows for SASRec, drawn as SASRec initialises its embeddings: N(0, initializer_range)."""
    trained = model.item_embedding.weight.detach()
    rows = torch.randn(count, trained.shape[1], generator=generator) * model.initializer_range
    model.item_embedding = torch.nn.Embedding.from_pretrained(torch.cat([trained, rows.to(trained)]), padding_idx=0)
    model.n_items += count


@torch.no_grad()
def sasrec_top_k(checkpoint, data_path, new_tokens, cases, k, seed):
    """SASRec's top-``k`` tokens for every history of every case set after the ``new_tokens`` got untrained
    ID rows (seeded by ``seed``)."""
    from recbole.data.interaction import Interaction

    from recbole_missrec.quick_start import load_data_and_model

    with quiet_argv():
        _, model, dataset, _, _, _ = load_data_and_model(
            checkpoint, data_path, {"use_gpu": False, "show_progress": False, "state": "WARNING"})
    tokens = list(dataset.field2id_token[dataset.iid_field]) + list(new_tokens)
    ids = {str(token): item for item, token in enumerate(tokens) if item > 0}
    grow_item_embedding(model, len(new_tokens), torch.Generator().manual_seed(seed))
    top = {}
    for name, histories in cases.items():
        top[name] = []
        for start in range(0, len(histories), 256):
            batch = histories[start:start + 256]
            rows = [[ids[token] for token in history][-model.max_seq_length:] for history in batch]
            seq = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
            for row, items in enumerate(rows):
                seq[row, :len(items)] = torch.tensor(items)
            lengths = torch.tensor([len(items) for items in rows])
            scores = model.full_sort_predict(Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths}))
            scores[:, 0] = float("-inf")
            top[name] += [[tokens[item] for item in row] for row in scores.topk(k, dim=1).indices.tolist()]
    return top


def ranks_in_top_k(top, targets, k):
    """0-based rank of each target within its top-``k`` list, ``k`` when it is not there."""
    return torch.tensor([items.index(target) if target in items else k for items, target in zip(top, targets)])
