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
