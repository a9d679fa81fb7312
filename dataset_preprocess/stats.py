"""Statistics of a dataset folder, computed from the files themselves so they always match what is there.

Users compare them with the papers (Scientific: 8,442 users, 4,385 items, 59,427 interactions); RecBole
prints other numbers (it adds a padding user and item and counts benchmark rows, i.e. interactions
minus users), so the JSON says which is which.
"""
import os

import numpy as np

from dataset_preprocess.layout import (
    FEATURE_SUFFIXES, SPLITS, atomic_write_json, count_rows, dataset_file, feature_dim, read_index, read_json,
    read_texts,
)


def feature_coverage(path, n_items):
    """Dimension, rows and how many items have a non-zero row (i.e. have the modality)."""
    dim = feature_dim(path, n_items)
    table = np.memmap(path, dtype=np.float32, mode="r").reshape(-1, dim)
    present = sum(int(table[start:start + 65536].any(axis=1).sum()) for start in range(0, len(table), 65536))
    return {"dim": dim, "rows": int(table.shape[0]), "items": present,
            "coverage": round(present / n_items, 4) if n_items else 0.0}


def compute_statistics(dataset_dir, name):
    items = read_index(dataset_file(dataset_dir, name, "item2index"))
    users = read_index(dataset_file(dataset_dir, name, "user2index"))
    rows = {split: count_rows(dataset_file(dataset_dir, name, f"{split}.inter")) for split in SPLITS}
    plain = dataset_file(dataset_dir, name, "inter")
    # Each user contributes n-1 benchmark rows for n interactions (n-3 train, 1 valid, 1 test).
    interactions = count_rows(plain) if os.path.isfile(plain) else sum(rows.values()) + len(users)
    stats = {
        "dataset": name,
        "users": len(users),
        "items": len(items),
        "interactions": interactions,
        "average_length": round(interactions / len(users), 4) if users else 0.0,
        "sparsity": round(1 - interactions / (len(users) * len(items)), 6) if users and items else 1.0,
        "benchmark_rows": rows,
        "recbole_counts": {"users": len(users) + 1, "items": len(items) + 1, "inters": sum(rows.values())},
        "modalities": {},
    }
    text_path = dataset_file(dataset_dir, name, "text")
    if os.path.isfile(text_path):
        texts = read_texts(text_path)
        with_text = sum(1 for item in items if texts.get(item, "").strip())
        stats["modalities"]["text"] = {"items": with_text, "coverage": round(with_text / len(items), 4)}
    for suffix, modality in FEATURE_SUFFIXES.items():
        path = dataset_file(dataset_dir, name, suffix)
        if os.path.isfile(path):
            stats["modalities"][suffix] = {"modality": modality, **feature_coverage(path, len(items))}
    return stats


def write_statistics(dataset_dir, name, provenance=None):
    """Recompute ``<NAME>.stats.json``; ``provenance`` (how the data was made) is kept from an earlier
    run when not given, so that refreshing after feature extraction does not lose it."""
    path = dataset_file(dataset_dir, name, "stats.json")
    stats = compute_statistics(dataset_dir, name)
    if provenance is None and os.path.isfile(path):
        provenance = read_json(path).get("provenance")
    if provenance is not None:
        stats["provenance"] = provenance
    atomic_write_json(path, stats)
    return stats


def format_statistics(stats):
    lines = [
        f"dataset {stats['dataset']}: {stats['users']:,} users, {stats['items']:,} items, "
        f"{stats['interactions']:,} interactions, {stats['average_length']:.2f} per user, "
        f"sparsity {stats['sparsity']:.4%}",
        "benchmark rows: " + ", ".join(f"{split} {count:,}" for split, count in stats["benchmark_rows"].items()),
    ]
    for key, info in stats["modalities"].items():
        label = f"{key} ({info['modality']}, {info['dim']}-d)" if "dim" in info else key
        lines.append(f"{label}: {info['items']:,} items ({info['coverage']:.1%})")
    return "\n".join(lines)
