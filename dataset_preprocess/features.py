"""Feature tables of a dataset folder: text (``feat1CLS``), word-dropped text (``feat2CLS``), image (``feat3CLS``).

Rows follow ``.item2index`` (row r = item index r), so the tables stay aligned with the ``.inter``
tokens whatever order the texts or images were found in. The encoders (torch, transformers) are
imported only when features are asked for, so the other commands start at once, and loaded only when
some file actually needs work, so a re-run over finished files does not wait for a model.
"""
import functools
import os

import numpy as np

from dataset_preprocess.layout import dataset_file, read_index, read_texts
from dataset_preprocess.resumable import build_feature_file, digest, fingerprint

DEFAULT_IMAGE_MODEL = "openai/clip-vit-base-patch32"


def model_key(model):
    """A local folder is identified by its absolute path, a hub name by itself."""
    return os.path.abspath(model) if os.path.isdir(model) else model


def augmented_texts(texts, ratio, seed):
    """Word-dropped copy of every text; seeded and drawn in index order, so re-runs reproduce it exactly."""
    from recbole_missrec.encoders.text import word_drop

    rng = np.random.default_rng(seed)
    return [word_drop(text, ratio, rng) for text in texts]


def sum_counts(key):
    return lambda reports: {key: sum(report[key] for report in reports)}


def build_text_features(dataset_dir, name, model=None, suffix="feat1CLS", augment_suffix="feat2CLS",
                        drop_ratio=0.2, seed=2020, batch_size=64, device="cpu", pooling="auto", max_length=128,
                        chunk_size=2048, force=False, show_progress=True):
    """Text features from ``<NAME>.text`` (and their word-dropped twins unless ``augment_suffix`` is None).

    ``model``: hub name or local folder; None = the offline default (all-MiniLM-L6-v2). Returns
    {suffix: report}.
    """
    from recbole_missrec.encoders.text import TextEncoder, default_text_encoder

    model = model or default_text_encoder()
    items = read_index(dataset_file(dataset_dir, name, "item2index"))
    by_item = read_texts(dataset_file(dataset_dir, name, "text"))
    texts = [by_item.get(item, "") for item in items]
    outputs = [(suffix, texts, {})]
    if augment_suffix:
        outputs.append((augment_suffix, augmented_texts(texts, drop_ratio, seed),
                        {"drop_ratio": drop_ratio, "seed": seed}))
    # loaded on first use
    encoder = functools.cache(lambda: TextEncoder(model, device=device, pooling=pooling, max_length=max_length))

    def encode_with(values):
        def encode_chunk(start, stop):
            chunk = values[start:stop]
            table = encoder().encode(chunk, batch_size=batch_size, show_progress=False)
            return table, {"blank_text": sum(1 for text in chunk if not str(text).strip())}
        return encode_chunk

    settings = {"model": model_key(model), "pooling": pooling, "max_length": max_length}
    reports = {}
    for out_suffix, values, augmentation in outputs:
        key = fingerprint(kind="text", texts=digest(values), **settings)
        reports[out_suffix] = build_feature_file(
            dataset_file(dataset_dir, name, out_suffix), key, len(values), encode_with(values),
            sum_counts("blank_text"), chunk_size=chunk_size, force=force, show_progress=show_progress,
            description=f"{name}.{out_suffix}", details={"kind": "text", **settings, **augmentation},
        )
    return reports


def image_files_digest(items, image_dir):
    """Which image file each item has, with size and modification time: new downloads change it."""
    from recbole_missrec.encoders.image import find_image

    entries = []
    for item in items:
        path = find_image(image_dir, item)
        stat = os.stat(path) if path else None
        entries.append(f"{item}|{path}|{stat.st_size}|{stat.st_mtime_ns}" if stat else f"{item}|")
    return digest(entries)


def merge_image_reports(reports):
    from recbole_missrec.encoders.image import ImageReport

    total = ImageReport()
    for report in reports:
        total.merge(ImageReport.from_dict(report))
    return {"images": total.as_dict()}


def build_image_features(dataset_dir, name, image_dir, model=DEFAULT_IMAGE_MODEL, suffix="feat3CLS",
                         batch_size=32, device="cpu", non_rgb="convert", chunk_size=2048, force=False,
                         show_progress=True):
    """Image features from ``<image_dir>/<original item id>.<ext>``; items without a readable image get a
    zero row and are listed in the report. Returns {suffix: report}."""
    from recbole_missrec.encoders.image import ImageEncoder

    items = read_index(dataset_file(dataset_dir, name, "item2index"))
    settings = {"model": model_key(model), "image_dir": os.path.abspath(image_dir), "non_rgb": non_rgb}
    key = fingerprint(kind="image", files=image_files_digest(items, image_dir), **settings)
    encoder = functools.cache(lambda: ImageEncoder(model, device=device, non_rgb=non_rgb))  # loaded on first use

    def encode_chunk(start, stop):
        table, report = encoder().encode_folder(items[start:stop], image_dir, batch_size, show_progress=False)
        return table, report.as_dict()

    report = build_feature_file(
        dataset_file(dataset_dir, name, suffix), key, len(items), encode_chunk, merge_image_reports,
        chunk_size=chunk_size, force=force, show_progress=show_progress, description=f"{name}.{suffix}",
        details={"kind": "image", **settings},
    )
    return {suffix: report}
