"""Builders for the dataset_preprocess tests: tiny random encoders and a synthetic raw Amazon sample.

Nothing is downloaded: the CLIP and BERT checkpoints are random, built from small configs with
tokenizers whose vocabularies are written here, and saved with ``save_pretrained``.
"""
import gzip
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

WORDS = (
    "red blue green black white steel glue tape roll sanding grit adhesive pack inch bottle brand "
    "industrial scientific tools lab glove safety mask clamp drill bit saw blade meter scale"
).split()


def _byte_level_alphabet():
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2/CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def write_tiny_bert(folder):
    """Random 1-layer BERT (hidden 32) with a WordPiece vocabulary of :data:`WORDS`."""
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "&", "-", *WORDS]
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_tiny_clip(folder):
    """Random CLIP (text and vision towers of width 32, projection 16, 32x32 images) with a character-level
    byte BPE tokenizer and a pillow image processor."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in _byte_level_alphabet():
            vocab[char + suffix] = len(vocab)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                 projection_dim=16)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def _image_bytes(rng, mode, fmt):
    size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def write_amazon_sample(folder, seed=0):
    """Raw Amazon 2018-style files for ~46 users and 31 items, and a local image folder.

    Returns a dict with the paths and the ground truth the tests check against:
    ``no_text`` (items whose title is missing or blank), ``titles`` (asin -> title),
    ``image`` (asin -> "rgb" | "grey" | "rgba" | "broken" | "truncated"; absent = no image file).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    items = [f"B{index:09d}" for index in range(31)]
    no_text = {items[3], items[11], items[20]}
    rare = set(items[25:30])  # few interactions: removed by the 5-core
    cascade = items[30]  # survives one pass of the 5-core but not the iteration (see below)
    titles = {}
    for index, item in enumerate(items):
        if item not in no_text:
            picked = rng.choice(WORDS, size=int(rng.integers(2, 6)), replace=False)
            titles[item] = f"{' '.join(picked)} {index} &amp; co"
    common = [item for item in items if item not in rare and item != cascade]

    rows = []
    for user_index in range(45):
        user = f"A{user_index:05d}USER"
        # a few users are too short for the 5-core; the others get 5-14 items
        length = int(rng.integers(2, 4)) if user_index % 9 == 0 else int(rng.integers(5, 15))
        chosen = rng.choice(common, size=length, replace=False)
        times = np.sort(rng.integers(1_400_000_000, 1_500_000_000, size=length))
        if length > 3:
            times[2] = times[1]  # a tie: input order must decide
        rows.extend((item, user, 5.0, int(time)) for item, time in zip(chosen, times))
    for item in rare:
        for user_index in rng.choice(45, size=2, replace=False):
            rows.append((item, f"A{int(user_index):05d}USER", 4.0, int(rng.integers(1_400_000_000, 1_500_000_000))))
    # The cascade item has 5 interactions, one from a too-short user; once that user goes it has 4 and
    # goes too, which leaves its only other fan, a user with exactly 5 interactions, with 4.
    for user in ("A00000USER", "A00001USER", "A00002USER", "A00003USER", "A99999USER"):
        rows.append((cascade, user, 3.0, int(rng.integers(1_400_000_000, 1_500_000_000))))
    for item in rng.choice(common, size=4, replace=False):
        rows.append((item, "A99999USER", 3.0, int(rng.integers(1_400_000_000, 1_500_000_000))))
    rows.append(rows[5])  # an exact duplicate review
    order = rng.permutation(len(rows))
    rows = [rows[index] for index in order]

    ratings = os.path.join(folder, "Sample.csv")
    with open(ratings, "w", encoding="utf-8") as handle:
        handle.writelines(f"{item},{user},{rating},{time}\n" for item, user, rating, time in rows)
    reviews = os.path.join(folder, "Sample_reviews.json.gz")
    with gzip.open(reviews, "wt", encoding="utf-8") as handle:
        for item, user, rating, time in rows:
            handle.write(json.dumps({"reviewerID": user, "asin": item, "overall": rating,
                                     "unixReviewTime": time, "reviewText": "fine"}) + "\n")

    image_dir = os.path.join(folder, "images")
    source_dir = os.path.join(folder, "image_source")
    os.makedirs(image_dir)
    os.makedirs(source_dir)
    kinds = {}
    for index, item in enumerate(items):
        kind = ("rgb", "rgb", "none", "grey", "rgba", "rgb", "broken", "truncated", "rgb")[index % 9]
        if kind == "none":
            continue
        kinds[item] = kind
        data = {
            "rgb": lambda: _image_bytes(rng, "RGB", "JPEG"),
            "grey": lambda: _image_bytes(rng, "L", "JPEG"),
            "rgba": lambda: _image_bytes(rng, "RGBA", "PNG"),
            "broken": lambda: b"<html>404 not found</html>",
            "truncated": lambda: _image_bytes(rng, "RGB", "JPEG")[:200],
        }[kind]()
        extension = ".png" if kind == "rgba" else ".jpg"
        for target in (image_dir, source_dir):
            with open(os.path.join(target, item + extension), "wb") as handle:
                handle.write(data)

    meta = os.path.join(folder, "meta_Sample.json.gz")
    with gzip.open(meta, "wt", encoding="utf-8") as handle:
        for index, item in enumerate(items):
            if item == items[20]:
                continue  # no metadata at all
            record = {"asin": item, "title": titles.get(item, "   "), "brand": "Acme",
                      "category": ["Industrial & Scientific", "Lab <b>Tools</b>"], "description": ["x"]}
            if item in kinds:
                extension = ".png" if kinds[item] == "rgba" else ".jpg"
                record["imageURLHighRes"] = [f"file://{os.path.join(source_dir, item + extension)}"]
            line = json.dumps(record) if index % 7 else repr(record)  # 2014-style literal lines too
            handle.write(line + "\n")
    return {"ratings": ratings, "reviews": reviews, "meta": meta, "image_dir": image_dir,
            "image_source": source_dir, "items": items, "no_text": no_text, "titles": titles, "image": kinds,
            "rows": rows}


def write_atomic_domain(folder, name, seed, n_users=20, n_items=15):
    """A RecBole atomic folder like ../shared/data/pretrain/<d>/: <d>.inter and <d>.item (titles only)."""
    rng = np.random.default_rng(seed)
    path = os.path.join(folder, name)
    os.makedirs(path)
    with open(os.path.join(path, f"{name}.inter"), "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(n_users):
            for item in rng.choice(n_items, size=int(rng.integers(5, 10)), replace=False):
                handle.write(f"{100 + user}\t{200 + int(item)}\t{int(rng.integers(1e9, 2e9))}\n")
    with open(os.path.join(path, f"{name}.item"), "w", encoding="utf-8") as handle:
        handle.write("item_id:token\ttitle:token_seq\n")
        for item in range(n_items):
            title = " ".join(rng.choice(WORDS, size=3, replace=False))
            handle.write(f"{200 + item}\t{title} &quot;{name}&quot;\n")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def amazon_sample(tmp_path_factory):
    return write_amazon_sample(str(tmp_path_factory.mktemp("raw")))


@pytest.fixture
def atomic_domain(tmp_path):
    """atomic_domain(name, seed) writes a title-only atomic domain folder under tmp_path/raw."""
    return lambda name, seed: write_atomic_domain(str(tmp_path / "raw"), name, seed)
