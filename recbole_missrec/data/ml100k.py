"""Text features for RecBole's bundled ml-100k, the plugin's offline default dataset.

ml-100k ships with RecBole (movie titles, genres, years) but has no feature files, so a preparation step
of the quick start (:func:`prepare`, before the dataset is loaded) encodes one text per movie with a local
sentence encoder and caches the table; the image modality is absent. Later runs reuse the cache unless
the encoder changes.
"""
import json
import os

import numpy as np
import pandas as pd

from recbole_missrec.atomic import atomic_write_json
from recbole_missrec.data.feature_file import write_feature_file


def cache_dir():
    root = os.environ.get("RECBOLE_MISSREC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "recbole_missrec"))
    return os.path.join(root, "ml-100k")


def movie_texts(item_file):
    """One text per item row (row = item token): 'title. genres. year'; row 0 and unused ids stay empty."""
    items = pd.read_csv(item_file, sep="\t", dtype=str, keep_default_na=False)
    items.columns = [column.split(":")[0] for column in items.columns]
    ids = items["item_id"].astype(int)
    texts = [""] * (int(ids.max()) + 1)
    for item_id, title, year, genres in zip(ids, items["movie_title"], items["release_year"], items["class"]):
        texts[item_id] = ". ".join(part for part in (title, genres, year) if part)
    return texts


def ensure_text_features(data_path, suffix, encoder=None, batch_size=128, show_progress=True):
    """Build (once) and return the folder holding ``ml-100k.<suffix>`` encoded from the movie texts."""
    from recbole_missrec.encoders.text import default_text_encoder, encode_texts

    encoder = encoder or default_text_encoder()
    folder = cache_dir()
    path = os.path.join(folder, f"ml-100k.{suffix}")
    stamp = path + ".json"
    if os.path.isfile(path) and os.path.isfile(stamp):
        with open(stamp) as handle:
            if json.load(handle).get("encoder") == encoder:
                return folder
    texts = movie_texts(os.path.join(data_path, "ml-100k.item"))
    table = encode_texts(texts, encoder, batch_size=batch_size, show_progress=show_progress)
    write_feature_file(path, np.asarray(table, dtype=np.float32))
    atomic_write_json(stamp, {"encoder": encoder, "items": len(texts), "dim": int(table.shape[1])})
    return folder


def prepare(config):
    """Point ``feature_path`` at the cached ml-100k text features, building them first if needed; a no-op
    for other datasets or when the user set ``feature_path``."""
    if config["dataset"] != "ml-100k" or config["feature_path"]:
        return
    suffix = config["text_suffix"] or config["plm_suffix"]
    config["feature_path"] = ensure_text_features(config["data_path"], suffix, config["text_encoder"],
                                                  show_progress=config["show_progress"])
