"""Readers for the raw Amazon Review files (2018 release; 2014 metadata is accepted too).

Interactions come from the ratings-only CSV (``item,user,rating,timestamp``, no header) or the reviews
JSON lines (``reviewerID``, ``asin``, ``unixReviewTime``); item text and image links come from the
metadata JSON lines, which the 2014 release writes as Python literals rather than JSON.
"""
import ast
import gzip
import json

import pandas as pd

from dataset_preprocess.itemtext import clean_text, join_fields

DEFAULT_TEXT_FIELDS = ("title", "category", "brand")
FIELD_ALIASES = {"category": ("category", "categories"), "image": ("imageURLHighRes", "imageURL", "imUrl")}


def open_text(path):
    """Plain or gzip-compressed text, chosen by the file's magic bytes rather than its name."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if compressed else open(path, encoding="utf-8")


def iter_records(path):
    """One dict per non-empty line, JSON or (2014 metadata) a Python literal; unreadable lines are skipped."""
    with open_text(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                try:
                    yield ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    continue


def read_ratings_csv(path):
    """DataFrame (user, item, timestamp) from a ratings-only CSV; a header line, if any, is dropped later
    with the other rows whose timestamp is not a number."""
    with open_text(path) as handle:
        frame = pd.read_csv(handle, header=None, names=["item", "user", "rating", "timestamp"], dtype=str)
    return frame[["user", "item", "timestamp"]]


def read_reviews_json(path):
    """DataFrame (user, item, timestamp) from reviews JSON lines."""
    rows = [
        (record.get("reviewerID"), record.get("asin"), record.get("unixReviewTime"))
        for record in iter_records(path)
    ]
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    return frame.dropna(subset=["user", "item"])


def _field(record, name):
    for key in FIELD_ALIASES.get(name, (name,)):
        if record.get(key):
            return record[key]
    return None


def image_urls(record):
    """Candidate image links of one metadata record, best first (high resolution before thumbnails)."""
    urls = []
    for key in FIELD_ALIASES["image"]:
        value = record.get(key) or []
        urls.extend([value] if isinstance(value, str) else value)
    return list(dict.fromkeys(url for url in urls if isinstance(url, str) and url.startswith(("http", "file:"))))


def read_metadata(path, text_fields=DEFAULT_TEXT_FIELDS, wanted_items=None):
    """({asin: text}, {asin: [image urls]}) for the items in ``wanted_items`` (all when None).

    An item's text is usable only when its first field (the title by default) is non-empty: categories
    and brand alone do not tell items apart. Unusable items get no entry, so the text filter drops them.
    """
    texts, urls = {}, {}
    for record in iter_records(path):
        asin = record.get("asin")
        if not asin or asin in texts or (wanted_items is not None and asin not in wanted_items):
            continue
        values = [_field(record, name) for name in text_fields]
        if clean_text(values[0]):
            texts[asin] = join_fields(values)
        links = image_urls(record)
        if links:
            urls[asin] = links
    return texts, urls
