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
from recbole_missrec.data.feature_file import write_feature_file

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


def is_done(path, key):
    """The file exists, its report carries ``key`` and its size matches the report."""
    report_path = path + ".json"
    if not (os.path.isfile(path) and os.path.isfile(report_path)):
        return False
    report = read_json(report_path)
    return report.get("fingerprint") == key and os.path.getsize(path) == 4 * report["rows"] * report["dim"]


def _save_part(path, table, report):
    """The chunk's table and report go into one .npz renamed into place: a part is whole or absent."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, table=table, report=np.array(json.dumps(report)))


def _load_part(path):
    with np.load(path) as part:
        return part["table"], json.loads(str(part["report"]))


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


def build_feature_file(path, key, n_rows, encode_chunk, summarise, chunk_size=2048, force=False,
                       show_progress=True, description="features", details=None):
    """Write ``path`` ([n_rows, dim] float32) unless it is already done; return its report.

    ``encode_chunk(start, stop)`` returns (table [stop-start, dim], JSON-able chunk report);
    ``summarise(chunk reports)`` folds them into the file's report; ``details`` (e.g. the encoder name)
    is stored with it. The report says whether this call skipped the file and how fast it encoded.
    """
    if not force and is_done(path, key):
        return {**read_json(path + ".json"), "skipped": True}
    folder = _parts_folder(path, key, force)
    bounds = [(start, min(start + chunk_size, n_rows)) for start in range(0, n_rows, chunk_size)]
    tables, reports, encoded, seconds = [], [], 0, 0.0
    with tqdm(total=n_rows, desc=description, unit="item", disable=not show_progress) as bar:
        for start, stop in bounds:
            part = os.path.join(folder, f"part-{start:010d}-{stop:010d}.npz")
            if os.path.isfile(part):
                table, report = _load_part(part)
            else:
                began = time.perf_counter()
                table, report = encode_chunk(start, stop)
                seconds += time.perf_counter() - began
                encoded += stop - start
                _save_part(part, np.asarray(table, dtype=np.float32), report)
            tables.append(table)
            reports.append(report)
            bar.update(stop - start)
    if not tables:
        raise ValueError(f"{path}: nothing to encode (0 items)")
    table = np.concatenate(tables)
    write_feature_file(path, table)
    report = {
        **(details or {}),
        "fingerprint": key,
        "rows": int(table.shape[0]),
        "dim": int(table.shape[1]),
        "nonzero_rows": int(table.any(axis=1).sum()),
        "encoded_this_run": encoded,
        "encode_seconds": round(seconds, 2),
        "items_per_second": round(encoded / seconds, 1) if seconds else None,
        **summarise(reports),
    }
    atomic_write_json(path + ".json", report)
    shutil.rmtree(folder)
    return {**report, "skipped": False}
