"""Several vectors per item (MSM4SR): sentence-level text features and image keywords, as multi-vector ``.npz``.

Both files hold one block per item in ``.item2index`` order, keyed by the item tokens of the ``.inter``
files (the indices "0".."N-1"), and an item without the modality has an empty block. The format is
``recbole_missrec.data.feature_file.write_multi_vector_file``'s; the plugin reads it with ``read_store``.

- Sentences: each item text split by :func:`~dataset_preprocess.itemtext.split_sentences`, one vector per
  sentence from any Hugging Face text encoder.
- Image keywords (reference §2.3): CLIP ranks a vocabulary of words against each item image (cosine of
  the image embedding and the words' prompted text embeddings); the top N words, in rank order, are
  encoded one vector each by a text encoder, so the image modality lives in the text encoder's space.
"""
import collections
import functools
import os
import re

import numpy as np

from dataset_preprocess.features import (
    DEFAULT_IMAGE_MODEL, image_files_digest, merge_image_reports, model_key, sum_counts,
)
from dataset_preprocess.itemtext import split_sentences
from dataset_preprocess.layout import atomic_write_lines, dataset_file, one_line, read_index, read_texts
from dataset_preprocess.resumable import build_multi_vector_file, digest, fingerprint

KEYWORD_SEPARATOR = " | "
# Function words that say nothing about what an image shows; words of over half the items' texts
# (here "industrial", "scientific") are dropped too, by frequency.
STOP_WORDS = frozenset("""
    about above after all also and any are around because been before being below between both but can
    could does down each for from further had has have her here him his how into its just more most
    not now off once only other our out over own same she should some such than that the their them then
    there these they this those through too under until very was were what when where which while who
    why will with without would you your
""".split())
_WORD = re.compile(r"[a-z]+")


def check_multi_vector_suffix(suffix):
    """The plugin picks the multi-vector reader by the ``.npz`` extension, so the file must carry it."""
    if not suffix.endswith(".npz"):
        raise ValueError(f"--suffix {suffix!r} must end in .npz: the plugin reads multi-vector files by that "
                         f"extension (e.g. sent.npz, imgkw.npz)")
    return suffix[:-len(".npz")]


def item_tokens(n_items):
    """The ``.inter`` tokens of the items, in ``.item2index`` order: their indices as strings."""
    return [str(index) for index in range(n_items)]


def _blocks_digest(blocks):
    return digest("\x1f".join(block) for block in blocks)


def build_sentence_features(dataset_dir, name, model=None, suffix="sent.npz", max_sentences=10, min_chars=2,
                            batch_size=64, device="cpu", pooling="auto", max_length=128, chunk_size=2048,
                            force=False, show_progress=True):
    """``<NAME>.<suffix>``: the sentences of each item's ``<NAME>.text``, one vector each (at most
    ``max_sentences``); items without text have none. ``model``: None = all-MiniLM-L6-v2 offline.
    Returns {suffix: report}."""
    from recbole_missrec.encoders.text import TextEncoder, default_text_encoder

    check_multi_vector_suffix(suffix)
    if max_sentences < 1:
        raise ValueError(f"--max-sentences must be at least 1, got {max_sentences}")
    model = model or default_text_encoder()
    items = read_index(dataset_file(dataset_dir, name, "item2index"))
    by_item = read_texts(dataset_file(dataset_dir, name, "text"))
    sentences = [split_sentences(by_item.get(item, ""), max_sentences, min_chars) for item in items]
    settings = {"model": model_key(model), "pooling": pooling, "max_length": max_length,
                "max_sentences": max_sentences, "min_chars": min_chars}
    key = fingerprint(kind="sentences", sentences=_blocks_digest(sentences), **settings)
    # loaded on first use
    encoder = functools.cache(lambda: TextEncoder(model, device=device, pooling=pooling, max_length=max_length))

    def encode_chunk(start, stop):
        blocks = sentences[start:stop]
        flat = [sentence for block in blocks for sentence in block]
        vectors = encoder().encode(flat, batch_size=batch_size, show_progress=False)  # [T, D]
        counts = np.array([len(block) for block in blocks], dtype=np.int64)
        return {"vectors": vectors, "counts": counts}, {"no_text": int((counts == 0).sum())}

    report = build_multi_vector_file(
        dataset_file(dataset_dir, name, suffix), key, item_tokens(len(items)), encode_chunk, sum_counts("no_text"),
        chunk_size=chunk_size, force=force, show_progress=show_progress, description=f"{name}.{suffix}",
        details={"kind": "sentences", **settings},
    )
    return {suffix: report}


def read_vocabulary(path):
    """Words or phrases of a vocabulary file, one per line, in file order; blank lines, ``#`` comments and
    repeats (up to case) are skipped."""
    if not os.path.isfile(path):
        raise ValueError(f"vocabulary file not found: {path} (--vocabulary). Give a text file with one word or "
                         f"phrase per line, or build one from the item texts with --vocabulary-from-texts K")
    words, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            word = one_line(line)
            if not word or word.startswith("#"):
                continue
            if "|" in word:
                raise ValueError(f"{path}:{number}: {word!r} holds '|', which separates keywords in the .tsv "
                                 f"listing; remove it from the vocabulary")
            if word.casefold() not in seen:
                seen.add(word.casefold())
                words.append(word)
    if not words:
        raise ValueError(f"vocabulary file {path} (--vocabulary) holds no words; write one word or phrase per line")
    return words


def vocabulary_from_texts(texts, size, min_letters=3, max_share=0.5):
    """The ``size`` words found in the most item texts: lower-case alphabetic words of at least
    ``min_letters`` letters, minus :data:`STOP_WORDS` and words of more than ``max_share`` of the texts
    (boilerplate such as the shared category); ties in alphabetical order."""
    frequency = collections.Counter()
    for text in texts:
        frequency.update({word for word in _WORD.findall(text.lower()) if len(word) >= min_letters})
    limit = max_share * len(texts)
    kept = [word for word, count in frequency.items() if word not in STOP_WORDS and count <= limit]
    return sorted(kept, key=lambda word: (-frequency[word], word))[:size]


def resolve_vocabulary(dataset_dir, name, stem, vocabulary=None, from_texts=None):
    """(words, where they came from): the ``vocabulary`` file, or the ``from_texts`` most frequent words of
    ``<NAME>.text``, which are also written to ``<NAME>.<stem>.vocab`` for inspection or editing."""
    if (vocabulary is None) == (from_texts is None):
        raise ValueError("give exactly one of --vocabulary FILE or --vocabulary-from-texts K")
    if vocabulary is not None:
        return read_vocabulary(vocabulary), vocabulary
    if from_texts < 1:
        raise ValueError(f"--vocabulary-from-texts must be at least 1, got {from_texts}")
    text_path = dataset_file(dataset_dir, name, "text")
    words = vocabulary_from_texts(list(read_texts(text_path).values()), from_texts)
    if not words:
        raise ValueError(f"--vocabulary-from-texts: {text_path} has no word that qualifies (3+ letters, not a "
                         f"stop word, in at most half the texts); give a --vocabulary file")
    path = dataset_file(dataset_dir, name, f"{stem}.vocab")
    atomic_write_lines(path, words)
    return words, path


def top_words(images, words, top_n):
    """[n, top_n] vocabulary indices, best first, of the words closest to each image by cosine.

    images [n, D] and words [V, D] are unit rows, so the dot product is the cosine; chosen words with
    equal scores keep their vocabulary order.
    """
    scores = images @ words.T  # [n, V]
    if top_n < scores.shape[1]:
        candidates = np.argpartition(-scores, top_n - 1, axis=1)[:, :top_n]  # [n, top_n], unordered
    else:
        candidates = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -candidate_scores), axis=1)
    return np.take_along_axis(candidates, order, axis=1)


def _keyword_listing(items, words):
    """Writer of ``<NAME>.<stem>.tsv``: index, original item id, its keywords best first (empty: no image)."""
    def write(path, chunks):
        counts = np.concatenate([chunk["counts"] for chunk in chunks])
        chosen = np.split(np.concatenate([chunk["keywords"] for chunk in chunks]), np.cumsum(counts)[:-1])
        rows = (f"{index}\t{item}\t{KEYWORD_SEPARATOR.join(words[word] for word in block)}"
                for index, (item, block) in enumerate(zip(items, chosen)))
        atomic_write_lines(path, ["index\titem\tkeywords", *rows])
    return write


def build_image_keyword_features(dataset_dir, name, image_dir, clip_model=DEFAULT_IMAGE_MODEL, vocabulary=None,
                                 vocabulary_from_texts=None, top_n=15, text_model=None, prompt="a photo of {}",
                                 suffix="imgkw.npz", batch_size=32, device="cpu", non_rgb="convert",
                                 chunk_size=2048, force=False, show_progress=True):
    """``<NAME>.<suffix>``: for each item image, the ``top_n`` vocabulary words CLIP finds closest, encoded
    one vector each by ``text_model`` (None = all-MiniLM-L6-v2 offline); items without a readable image
    have none. Also writes ``<NAME>.<stem>.tsv`` listing the words. Returns {suffix: report}."""
    from recbole_missrec.encoders.image import ImageEncoder
    from recbole_missrec.encoders.text import TextEncoder, default_text_encoder

    stem = check_multi_vector_suffix(suffix)
    if "{}" not in prompt:
        raise ValueError(f"--prompt {prompt!r} must contain {{}} where the word goes, e.g. 'a photo of {{}}'")
    if top_n < 1:
        raise ValueError(f"--top-n must be at least 1, got {top_n}")
    words, source = resolve_vocabulary(dataset_dir, name, stem, vocabulary, vocabulary_from_texts)
    if top_n > len(words):
        raise ValueError(f"--top-n {top_n} is larger than the vocabulary: {len(words)} words in {source}")
    text_model = text_model or default_text_encoder()
    items = read_index(dataset_file(dataset_dir, name, "item2index"))
    settings = {"clip_model": model_key(clip_model), "text_model": model_key(text_model), "prompt": prompt,
                "top_n": top_n, "image_dir": os.path.abspath(image_dir), "non_rgb": non_rgb}
    key = fingerprint(kind="image_keywords", files=image_files_digest(items, image_dir), vocabulary=digest(words),
                      **settings)

    # Loaded on first use; the vocabulary is encoded once per run, by CLIP (prompted) and by the text encoder.
    images = functools.cache(lambda: ImageEncoder(clip_model, device=device, non_rgb=non_rgb))
    clip_words = functools.cache(lambda: TextEncoder(clip_model, device=device).encode(
        [prompt.replace("{}", word) for word in words], batch_size=batch_size, show_progress=False))  # [V, Dc]
    word_vectors = functools.cache(lambda: TextEncoder(text_model, device=device).encode(
        words, batch_size=batch_size, show_progress=False))  # [V, Dt]

    def encode_chunk(start, stop):
        table, report = images().encode_folder(items[start:stop], image_dir, batch_size, show_progress=False)
        imaged = table.any(axis=1)
        chosen = top_words(table[imaged], clip_words(), top_n).reshape(-1)  # [n_imaged * top_n]
        counts = np.where(imaged, top_n, 0).astype(np.int64)
        return {"vectors": word_vectors()[chosen], "counts": counts, "keywords": chosen}, report.as_dict()

    path = dataset_file(dataset_dir, name, suffix)
    report = build_multi_vector_file(
        path, key, item_tokens(len(items)), encode_chunk, merge_image_reports, chunk_size=chunk_size,
        force=force, show_progress=show_progress, description=f"{name}.{suffix}",
        details={"kind": "image_keywords", **settings, "vocabulary": {"source": source, "words": len(words)}},
        companions={dataset_file(dataset_dir, name, f"{stem}.tsv"): _keyword_listing(items, words)},
    )
    return {suffix: report}
