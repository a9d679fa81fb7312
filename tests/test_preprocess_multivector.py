"""Multi-vector features (MSM4SR): sentence-level text and image keywords, with tiny random encoders."""
import os

import numpy as np
import pytest
import torch

from dataset_preprocess.cli import main
from dataset_preprocess.itemtext import split_sentences
from dataset_preprocess.layout import read_index, read_texts, write_texts
from dataset_preprocess.multivector import (
    build_image_keyword_features, build_sentence_features, vocabulary_from_texts,
)
from recbole_missrec.data.feature_file import read_multi_vector_file
from recbole_missrec.data.feature_store import read_store
from recbole_missrec.encoders import text as text_module
from recbole_missrec.encoders.image import find_image, load_image
from recbole_missrec.encoders.text import encode_texts

pytest_plugins = ["preprocess_fixtures"]  # tiny encoders and the raw Amazon sample

WORDS = ("red", "blue", "green", "black", "white", "steel", "glue", "tape", "roll", "sanding", "grit", "adhesive",
         "bottle", "lab", "glove", "safety", "mask", "clamp", "drill", "saw", "blade", "meter", "scale")


@pytest.fixture
def dataset(amazon_sample, tmp_path):
    folder = str(tmp_path / "Sample")
    main(["amazon", "--ratings", amazon_sample["ratings"], "--meta", amazon_sample["meta"], "--output-dir", folder])
    return folder


def sample_file(folder, suffix):
    return os.path.join(folder, f"Sample.{suffix}")


def shuffled_tokens(n_items):
    """Item tokens in an order unlike the file's, as RecBole's internal ids may be."""
    return np.array([str(index) for index in np.random.default_rng(1).permutation(n_items)])


@pytest.mark.parametrize("text, expected", [
    ("Steel Glue 4.5-Inch, 1/2 oz. Industrial & Scientific Tapes. Acme.",
     ["Steel Glue 4.5-Inch, 1/2 oz.", "Industrial & Scientific Tapes.", "Acme."]),
    ("Wow!! Really? (Yes.) Done", ["Wow!!", "Really?", "(Yes.)", "Done"]),
    ("Tape roll. . Acme. ACME. tape  Roll", ["Tape roll.", "Acme."]),  # stray stop, repeats up to case/spacing
    ("J. Smith drill. 3M.", ["J. Smith drill.", "3M."]),  # one letter joins the next part; "3M" stands
    ("Bit saw. X.", ["Bit saw. X."]),  # a short last part joins the one before
    ("O.D.140 tube.  ", ["O.D.140 tube."]),
    ("", []),
    (" . ", []),
])
def test_sentence_splitting_rules(text, expected):
    assert split_sentences(text) == expected


def test_sentence_limits():
    text = "One. Two. Three. Four."
    assert split_sentences(text, max_sentences=2) == ["One.", "Two."]
    assert split_sentences("Mr. Heater. Abc. 3M.", min_chars=3) == ["Mr. Heater.", "Abc. 3M."]
    assert split_sentences("Mr. Heater. Abc. 3M.") == ["Mr.", "Heater.", "Abc.", "3M."]


def test_sentence_file_round_trips_through_read_store(dataset, tiny_bert):
    items = read_index(sample_file(dataset, "item2index"))
    texts = read_texts(sample_file(dataset, "text"))
    texts[items[4]] = "  "  # an item without text: missing modality
    texts[items[7]] = "Glue tape. Red glue. Blue. Black. White. Steel."
    write_texts(sample_file(dataset, "text"), items, [texts[item] for item in items])

    report = build_sentence_features(dataset, "Sample", tiny_bert, max_sentences=4, chunk_size=7,
                                     show_progress=False)["sent.npz"]
    sentences = [split_sentences(texts[item], 4) for item in items]
    counts = [len(block) for block in sentences]
    assert counts[4] == 0 and counts[7] == 4 and max(counts) == 4
    assert report["no_text"] == 1 and report["vectors"] == sum(counts) and report["rows"] == len(items)
    assert report["vectors_per_item"] == {"mean": round(sum(counts) / (len(items) - 1), 3), "max": 4}

    tokens = shuffled_tokens(len(items))
    store = read_store(sample_file(dataset, "sent.npz"), 32, tokens)
    assert store.table.shape == (len(items) + 1, 4, 32)
    expected_counts = [0] + [counts[int(token)] for token in tokens]  # row 0 = padding
    assert store.slot_mask.sum(1).tolist() == expected_counts
    assert store.present.tolist() == [count > 0 for count in expected_counts]
    assert store.slot_mask[:, 0].tolist() == store.present.tolist()  # real slots come first
    for row in (1, 2, 1 + int(np.flatnonzero(tokens == "7")[0])):
        block = sentences[int(tokens[row - 1])]
        alone = encode_texts(block, tiny_bert, batch_size=1, show_progress=False)
        np.testing.assert_allclose(store.table[row, :len(block)].numpy(), alone, atol=1e-5)
        assert not store.table[row, len(block):].any()


def test_sentences_rerun_skips_finished_work_and_resumes_chunks(dataset, tiny_bert, monkeypatch, capsys):
    calls, crash_at = [], [2]
    original = text_module.TextEncoder.encode

    def encode_then_crash(self, texts, **kwargs):
        calls.append(1)
        if len(calls) == crash_at[0]:
            raise RuntimeError("killed")
        return original(self, texts, **kwargs)

    monkeypatch.setattr(text_module.TextEncoder, "encode", encode_then_crash)
    command = ["features", "sentences", "--dataset-dir", dataset, "--model", tiny_bert, "--chunk-size", "10",
               "--quiet"]
    with pytest.raises(RuntimeError, match="killed"):
        main(command)
    path = sample_file(dataset, "sent.npz")
    assert not os.path.exists(path) and len(os.listdir(path + ".parts")) == 2  # fingerprint + one chunk
    n_items = len(read_index(sample_file(dataset, "item2index")))
    crash_at[0] = None
    main(command)
    assert f"encoded {n_items - 10:,} items" in capsys.readouterr().out
    assert not os.path.exists(path + ".parts")
    before = os.stat(path)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished file was encoded again")
    monkeypatch.setattr(text_module.TextEncoder, "__init__", refuse)
    main(command)
    assert "sent.npz: up to date, skipped" in capsys.readouterr().out
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with pytest.raises(AssertionError, match="encoded again"):  # other settings are other work
        main(command + ["--max-sentences", "2"])


def brute_force_keywords(clip_folder, image_paths, words, prompt, top_n):
    """The top words of each image by cosine, computed here from CLIPModel directly."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_folder)
    processor = AutoImageProcessor.from_pretrained(clip_folder, backend="pil")

    def unit(output):
        output = output if torch.is_tensor(output) else output.pooler_output
        return torch.nn.functional.normalize(output.double(), dim=-1)

    with torch.no_grad():
        prompts = tokenizer([prompt.replace("{}", word) for word in words], padding=True, return_tensors="pt")
        word_embeddings = unit(model.get_text_features(**prompts))  # [V, 16]
        pixels = processor(images=[load_image(path)[0] for path in image_paths], return_tensors="pt")
        image_embeddings = unit(model.get_image_features(pixel_values=pixels["pixel_values"]))  # [n, 16]
    scores = (image_embeddings @ word_embeddings.T).numpy()
    return [[words[index] for index in row] for row in np.argsort(-scores, axis=1)[:, :top_n]]


def read_keyword_listing(path):
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert lines[0] == "index\titem\tkeywords"
    rows = [line.split("\t") for line in lines[1:]]
    return [(int(index), item, keywords.split(" | ") if keywords else []) for index, item, keywords in rows]


def test_image_keywords_are_clips_top_words_encoded_by_the_text_model(dataset, tiny_clip, tiny_bert, amazon_sample,
                                                                      tmp_path):
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text("# product words\n" + "\n".join(WORDS) + "\n\nGlue\n", encoding="utf-8")
    top_n, prompt = 5, "a photo of {}, a product"
    report = build_image_keyword_features(
        dataset, "Sample", amazon_sample["image_dir"], tiny_clip, vocabulary=str(vocabulary), top_n=top_n,
        text_model=tiny_bert, prompt=prompt, batch_size=4, chunk_size=6, show_progress=False)["imgkw.npz"]

    items = read_index(sample_file(dataset, "item2index"))
    kinds = [amazon_sample["image"].get(item, "none") for item in items]
    imaged = [kind in ("rgb", "grey", "rgba") for kind in kinds]
    assert {"none", "broken", "truncated"} <= set(kinds) and any(imaged)
    paths = [find_image(amazon_sample["image_dir"], item) for item, ok in zip(items, imaged) if ok]
    expected = iter(brute_force_keywords(tiny_clip, paths, list(WORDS), prompt, top_n))
    expected = [next(expected) if ok else [] for ok in imaged]

    listing = read_keyword_listing(sample_file(dataset, "imgkw.tsv"))
    assert listing == [(index, item, words) for index, (item, words) in enumerate(zip(items, expected))]
    assert report["vocabulary"]["words"] == len(WORDS)  # "Glue" repeats "glue"
    assert report["images"]["encoded"] == sum(imaged) and report["nonzero_rows"] == sum(imaged)

    tokens, offsets, vectors = read_multi_vector_file(sample_file(dataset, "imgkw.npz"), 32)
    assert tokens.tolist() == [str(index) for index in range(len(items))]
    assert np.diff(offsets).tolist() == [top_n if ok else 0 for ok in imaged]
    word_vectors = dict(zip(WORDS, encode_texts(list(WORDS), tiny_bert, show_progress=False)))
    for index, words in enumerate(expected):
        block = vectors[offsets[index]:offsets[index + 1]]
        np.testing.assert_allclose(block, np.array([word_vectors[word] for word in words]).reshape(-1, 32),
                                   atol=1e-5)

    store = read_store(sample_file(dataset, "imgkw.npz"), 32, shuffled_tokens(len(items)))
    assert store.slots == top_n
    assert store.present[1:].tolist() == [imaged[int(token)] for token in shuffled_tokens(len(items))]


def test_vocabulary_from_texts():
    texts = ["Red steel glue. Industrial tools. Acme.", "Blue steel tape for the lab. Industrial tools. Acme.",
             "Red tape, red glue! Industrial. Acme.", "Steel clamp with red grip. Tools. Acme.",
             "Black saw blade. Industrial tools. Acme.", "Glue gun. Industrial. Tools."]
    # "acme", "industrial", "tools" are in over half the texts; "for", "the", "with" are stop words;
    # words under 3 letters never count; a word counts once per text. Ties are alphabetical.
    assert vocabulary_from_texts(texts, 4) == ["glue", "red", "steel", "tape"]
    assert vocabulary_from_texts(texts, 100) == ["glue", "red", "steel", "tape", "black", "blade", "blue", "clamp",
                                                 "grip", "gun", "lab", "saw"]


def test_cli_image_keywords_from_the_dataset_texts(dataset, tiny_clip, tiny_bert, amazon_sample, capsys):
    main(["features", "image-keywords", "--dataset-dir", dataset, "--image-dir", amazon_sample["image_dir"],
          "--clip-model", tiny_clip, "--text-model", tiny_bert, "--vocabulary-from-texts", "6", "--top-n", "3",
          "--quiet"])
    out = capsys.readouterr().out
    assert "imgkw.npz: " in out and "3.0 per item on average" in out and "corrupt" in out
    with open(sample_file(dataset, "imgkw.vocab"), encoding="utf-8") as handle:
        vocabulary = handle.read().split()
    texts = list(read_texts(sample_file(dataset, "text")).values())
    assert vocabulary == vocabulary_from_texts(texts, 6) and len(vocabulary) == 6
    listed = {word for _, _, words in read_keyword_listing(sample_file(dataset, "imgkw.tsv")) for word in words}
    assert listed and listed <= set(vocabulary)


@pytest.mark.parametrize("case, message", [
    ("missing", r"vocabulary file not found: .*absent\.txt \(--vocabulary\)"),
    ("empty", r"vocabulary file .*empty\.txt \(--vocabulary\) holds no words"),
    ("top_n", r"--top-n 4 is larger than the vocabulary: 3 words in .*three\.txt"),
    ("suffix", r"--suffix 'imgkw' must end in \.npz"),
    ("prompt", r"--prompt 'a photo' must contain \{\}"),
])
def test_bad_image_keyword_inputs_name_the_file_or_flag(dataset, tmp_path, case, message):
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n   \n", encoding="utf-8")
    (tmp_path / "three.txt").write_text("glue\ntape\nsteel\n", encoding="utf-8")
    options = {"vocabulary": str(tmp_path / {"missing": "absent.txt", "empty": "empty.txt"}.get(case, "three.txt")),
               "top_n": 4 if case == "top_n" else 2}
    if case == "suffix":
        options["suffix"] = "imgkw"
    if case == "prompt":
        options["prompt"] = "a photo"
    with pytest.raises(ValueError, match=message):
        build_image_keyword_features(dataset, "Sample", str(tmp_path), "unused-clip", show_progress=False, **options)
