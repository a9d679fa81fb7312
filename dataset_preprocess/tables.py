"""Readers for any interaction table and item-text table, RecBole atomic files included.

RecBole atomic headers carry a type (``item_id:token``); it is stripped so that columns are named as in
the user's own CSV/TSV files. Tab-separated files are read without quote handling, because titles
contain stray quotes that would otherwise swallow lines.
"""
import csv
import glob
import os

import pandas as pd

from dataset_preprocess.itemtext import join_fields


def read_table(path):
    """All columns as strings; ``.csv`` is comma-separated, anything else tab-separated."""
    if path.endswith((".csv", ".csv.gz")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    frame.columns = [column.split(":", 1)[0] for column in frame.columns]
    return frame


def _require(frame, columns, path):
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column {missing} (columns: {list(frame.columns)})")


def read_interaction_table(path, user_field="user_id", item_field="item_id", time_field="timestamp"):
    """DataFrame (user, item, timestamp)."""
    frame = read_table(path)
    _require(frame, [user_field, item_field, time_field], path)
    return frame.rename(columns={user_field: "user", item_field: "item", time_field: "timestamp"})[
        ["user", "item", "timestamp"]
    ]


def read_item_text_table(path, item_field="item_id", text_fields=("title",)):
    """{item id: text} for items whose first text field is non-empty (see ``amazon.read_metadata``)."""
    frame = read_table(path)
    _require(frame, [item_field, *text_fields], path)
    texts = {}
    for item, *values in frame[[item_field, *text_fields]].itertuples(index=False):
        if values[0].strip() and item not in texts:
            texts[item] = join_fields(values)
    return texts


def atomic_folder(folder):
    """(name, .inter path, .item path) of a RecBole atomic folder ``<folder>/<name>.inter|.item``."""
    name = os.path.basename(os.path.normpath(folder))
    inter, item = (os.path.join(folder, f"{name}.{suffix}") for suffix in ("inter", "item"))
    if os.path.isfile(inter) and os.path.isfile(item):
        return name, inter, item
    found = sorted(glob.glob(os.path.join(folder, "*.inter")))
    raise FileNotFoundError(
        f"{folder} is not an atomic folder: expected {name}.inter and {name}.item (found {found or 'no .inter'})"
    )
