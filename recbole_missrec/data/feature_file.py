"""Raw item-feature files: float32, row-major, no header, row r = the item whose token is ``r``.

This is the layout of UniSRec/MISSRec (`numpy.tofile`), kept so that published feature files load
unchanged. RecBole has no reader for it, hence this module; every check names the file and the fix.
"""
import os

import numpy as np

from recbole_missrec.atomic import atomic_open


class FeatureFileError(ValueError):
    """A feature file is missing or malformed; the message names the file and what to do."""


def read_feature_file(path, dim, min_rows=0):
    """Return the table in ``path`` as a float32 array of shape [rows, dim].

    ``min_rows`` is the number of rows the caller will index (largest item token + 1).
    """
    if not os.path.isfile(path):
        raise FeatureFileError(
            f"feature file not found: {path}. Build it with `python -m dataset_preprocess features ...` "
            f"or drop its modality from `modal_type`."
        )
    row_bytes = dim * 4
    size = os.path.getsize(path)
    if size == 0 or size % row_bytes:
        raise FeatureFileError(
            f"{path}: size {size} bytes is not a multiple of one row ({dim} float32 = {row_bytes} bytes). "
            f"Check the dimension setting (`plm_size` for text, `img_size` for images) against the encoder "
            f"that wrote the file."
        )
    table = np.fromfile(path, dtype=np.float32).reshape(-1, dim)
    if table.shape[0] < min_rows:
        raise FeatureFileError(
            f"{path}: {table.shape[0]} rows, but the interaction files use item tokens up to "
            f"{min_rows - 1}. The file was built for another item index; rebuild it from this dataset's "
            f".item2index."
        )
    bad = ~np.isfinite(table).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise FeatureFileError(
            f"{path}: {rows.size} rows hold NaN or inf (first rows: {rows[:5].tolist()}). Re-encode those "
            f"items, or write all-zero rows to mark their modality as missing."
        )
    return table


def write_feature_file(path, table):
    """Write ``table`` ([rows, dim]) as raw float32, atomically: a crash never leaves a partial file."""
    table = np.ascontiguousarray(table, dtype=np.float32)
    if table.ndim != 2:
        raise ValueError(f"feature table for {path} must be 2-D, got shape {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError(f"feature table for {path} holds NaN or inf; refusing to write it")
    with atomic_open(path, "wb") as handle:
        table.tofile(handle)


MULTI_VECTOR_KEYS = ("vectors", "offsets", "items")


def write_multi_vector_file(path, items, vectors_per_item):
    """Write items with several vectors each (sentences of a text, keywords of an image) as ``.npz``:
    ``vectors`` float32 [T, D] (every item's vectors, item after item), ``offsets`` int64 [n + 1] (item i
    owns ``vectors[offsets[i]:offsets[i + 1]]``), ``items`` str [n] (the item tokens of the .inter files).
    An item with no vector lacks the modality. Written atomically."""
    vectors_per_item = [np.asarray(block, dtype=np.float32).reshape(-1, np.shape(block)[-1]) for block in vectors_per_item]
    if len(items) != len(vectors_per_item):
        raise ValueError(f"{path}: {len(items)} items but {len(vectors_per_item)} vector blocks")
    dims = {block.shape[1] for block in vectors_per_item}
    if len(dims) > 1:
        raise ValueError(f"{path}: vectors of several widths {sorted(dims)}")
    vectors = np.concatenate(vectors_per_item) if vectors_per_item else np.zeros((0, 0), np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError(f"multi-vector table for {path} holds NaN or inf; refusing to write it")
    offsets = np.concatenate([[0], np.cumsum([len(block) for block in vectors_per_item])]).astype(np.int64)
    with atomic_open(path, "wb") as handle:
        np.savez(handle, vectors=vectors, offsets=offsets, items=np.asarray([str(item) for item in items]))


def read_multi_vector_file(path, dim=None):
    """(items [n] str, offsets [n + 1] int64, vectors [T, D] float32) of a file written by
    :func:`write_multi_vector_file`, checked; ``dim`` (if set) must be the vectors' width."""
    if not os.path.isfile(path):
        raise FeatureFileError(
            f"feature file not found: {path}. Build it with `python -m dataset_preprocess features ...` "
            f"or drop its modality from `modal_type`."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in MULTI_VECTOR_KEYS if key not in data]
            if missing:
                raise FeatureFileError(
                    f"{path}: not a multi-vector feature file, it lacks {missing} (needs vectors, offsets, items; "
                    f"see dataset_preprocess/README.md)"
                )
            items, offsets, vectors = data["items"].astype(str), data["offsets"].astype(np.int64), data["vectors"]
    except (OSError, ValueError) as error:
        if isinstance(error, FeatureFileError):
            raise
        raise FeatureFileError(f"{path}: not a readable .npz multi-vector feature file ({error})") from None
    if offsets.shape != (len(items) + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != len(vectors):
        raise FeatureFileError(
            f"{path}: offsets must start at 0, never decrease, end at the number of vectors ({len(vectors)}) and "
            f"have one entry per item plus one ({len(items) + 1}); rebuild the file"
        )
    if len(set(items.tolist())) != len(items):
        raise FeatureFileError(f"{path}: an item token appears twice in `items`; rebuild the file")
    if vectors.ndim != 2 or (dim and vectors.shape[1] != dim):
        raise FeatureFileError(
            f"{path}: vectors of shape {vectors.shape}, expected [T, {dim}]. Check the dimension setting "
            f"(`plm_size` for text, `img_size` for images) against the encoder that wrote the file."
        )
    if not np.isfinite(vectors).all():
        raise FeatureFileError(f"{path}: some vectors hold NaN or inf. Re-encode those items.")
    return items, offsets, vectors.astype(np.float32, copy=False)
