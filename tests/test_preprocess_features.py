"""Feature files of a processed synthetic dataset: alignment with .item2index, missing rows, re-runs, resuming."""
import json
import os

import numpy as np
import pytest

from dataset_preprocess.cli import main
from dataset_preprocess.features import build_image_features, build_text_features
from dataset_preprocess.layout import read_index
from recbole_missrec.data.feature_file import read_feature_file
from recbole_missrec.encoders import text as text_module
from recbole_missrec.encoders.text import encode_texts, word_drop

pytest_plugins = ["preprocess_fixtures"]  # tiny encoders and the raw Amazon sample


@pytest.fixture
def dataset(amazon_sample, tmp_path):
    folder = str(tmp_path / "Sample")
    main(["amazon", "--ratings", amazon_sample["ratings"], "--meta", amazon_sample["meta"], "--output-dir", folder])
    return folder


def item_ids(folder):
    return read_index(os.path.join(folder, "Sample.item2index"))


def test_text_rows_are_aligned_with_item2index(dataset, tiny_bert):
    reports = build_text_features(dataset, "Sample", tiny_bert, chunk_size=7, show_progress=False)
    items = item_ids(dataset)
    table = read_feature_file(os.path.join(dataset, "Sample.feat1CLS"), 32, min_rows=len(items))
    assert table.shape == (len(items), 32)
    with open(os.path.join(dataset, "Sample.text"), encoding="utf-8") as handle:
        texts = dict(line.rstrip("\n").split("\t") for line in list(handle)[1:])
    # Encode item by item, in a shuffled order, straight from the item's own text.
    order = np.random.default_rng(0).permutation(len(items))
    alone = encode_texts([texts[items[row]] for row in order], tiny_bert, batch_size=1, show_progress=False)
    np.testing.assert_allclose(table[order], alone, atol=1e-5)
    assert reports["feat1CLS"]["rows"] == len(items) and not reports["feat1CLS"]["skipped"]
    assert reports["feat1CLS"]["blank_text"] == 0 and reports["feat1CLS"]["nonzero_rows"] == len(items)

    augmented = read_feature_file(os.path.join(dataset, "Sample.feat2CLS"), 32, min_rows=len(items))
    rng = np.random.default_rng(2020)
    dropped = [word_drop(texts[item], 0.2, rng) for item in items]
    np.testing.assert_allclose(augmented, encode_texts(dropped, tiny_bert, show_progress=False), atol=1e-5)
    assert not np.allclose(augmented, table)


def test_image_rows_are_zero_exactly_where_the_image_is_missing_or_broken(dataset, tiny_clip, amazon_sample):
    reports = build_image_features(dataset, "Sample", amazon_sample["image_dir"], tiny_clip, chunk_size=5,
                                   batch_size=4, show_progress=False)
    items = item_ids(dataset)
    table = read_feature_file(os.path.join(dataset, "Sample.feat3CLS"), 16, min_rows=len(items))
    kinds = [amazon_sample["image"].get(item, "none") for item in items]
    assert table.any(axis=1).tolist() == [kind in ("rgb", "grey", "rgba") for kind in kinds]
    assert {"none", "broken", "truncated", "grey", "rgba"} <= set(kinds)  # every case is exercised
    images = reports["feat3CLS"]["images"]
    assert images["missing"] == kinds.count("none")
    assert images["corrupt"] == kinds.count("broken") + kinds.count("truncated")
    assert images["converted"] == kinds.count("grey") + kinds.count("rgba")
    assert sorted(images["items"]["corrupt"]) == sorted(
        item for item, kind in zip(items, kinds) if kind in ("broken", "truncated"))


def forbid_encoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished file was encoded again")
    monkeypatch.setattr(text_module.TextEncoder, "__init__", refuse)


def test_rerun_skips_finished_files(dataset, tiny_bert, monkeypatch):
    build_text_features(dataset, "Sample", tiny_bert, show_progress=False)
    path = os.path.join(dataset, "Sample.feat1CLS")
    before = os.stat(path)
    forbid_encoding(monkeypatch)
    reports = build_text_features(dataset, "Sample", tiny_bert, show_progress=False)
    assert reports["feat1CLS"]["skipped"] and reports["feat2CLS"]["skipped"]
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with pytest.raises(AssertionError, match="encoded again"):  # other settings are other work
        build_text_features(dataset, "Sample", tiny_bert, pooling="cls", show_progress=False)


def test_interrupted_run_resumes_from_finished_chunks(dataset, tiny_bert, monkeypatch):
    calls, crash_at = [], [3]
    original = text_module.TextEncoder.encode

    def encode_then_crash(self, texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == crash_at[0]:
            raise RuntimeError("killed")
        return original(self, texts, **kwargs)

    monkeypatch.setattr(text_module.TextEncoder, "encode", encode_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        build_text_features(dataset, "Sample", tiny_bert, augment_suffix=None, chunk_size=5, show_progress=False)
    path = os.path.join(dataset, "Sample.feat1CLS")
    assert not os.path.exists(path)
    assert len([name for name in os.listdir(path + ".parts") if name.endswith(".npz")]) == 2

    calls.clear()
    crash_at[0] = None
    report = build_text_features(dataset, "Sample", tiny_bert, augment_suffix=None, chunk_size=5,
                                 show_progress=False)["feat1CLS"]
    n_items = len(item_ids(dataset))
    assert sum(calls) == n_items - 10 and report["encoded_this_run"] == n_items - 10
    assert not os.path.exists(path + ".parts")
    resumed = np.fromfile(path, dtype=np.float32)
    build_text_features(dataset, "Sample", tiny_bert, augment_suffix=None, force=True, show_progress=False)
    assert sum(calls) == 2 * n_items - 10  # force: everything again
    np.testing.assert_allclose(resumed, np.fromfile(path, dtype=np.float32), atol=1e-6)


def test_a_failed_rebuild_leaves_the_old_file_whole(dataset, tiny_bert, monkeypatch):
    build_text_features(dataset, "Sample", tiny_bert, augment_suffix=None, show_progress=False)
    path = os.path.join(dataset, "Sample.feat1CLS")
    with open(path, "rb") as handle:
        before = handle.read()
    original = text_module.TextEncoder.encode
    calls = []

    def encode_then_fail(self, texts, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, texts, **kwargs)

    monkeypatch.setattr(text_module.TextEncoder, "encode", encode_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_text_features(dataset, "Sample", tiny_bert, augment_suffix=None, pooling="cls", chunk_size=5,
                            show_progress=False)
    with open(path, "rb") as handle:
        assert handle.read() == before
    assert not [name for name in os.listdir(dataset) if name.endswith(".tmp")]


def test_cli_text_and_image_features(dataset, tiny_bert, tiny_clip, amazon_sample, capsys):
    main(["features", "text", "--dataset-dir", dataset, "--model", tiny_bert, "--quiet"])
    main(["features", "image", "--dataset-dir", dataset, "--image-dir", amazon_sample["image_dir"],
          "--model", tiny_clip, "--quiet"])
    out = capsys.readouterr().out
    assert "feat1CLS: " in out and "feat2CLS: " in out and "corrupt" in out
    main(["features", "text", "--dataset-dir", dataset, "--model", tiny_bert, "--quiet"])
    assert "up to date, skipped" in capsys.readouterr().out
    with open(os.path.join(dataset, "Sample.stats.json"), encoding="utf-8") as handle:
        stats = json.load(handle)
    image = stats["modalities"]["feat3CLS"]
    assert image["dim"] == 16 and 0 < image["coverage"] < 1
    assert stats["provenance"]["min_count"] == 5  # kept from the amazon step
