"""merge-pretrain on atomic title-only domains (like ../shared/data/pretrain/) and on processed folders."""
import json
import os

import numpy as np
import pytest

from dataset_preprocess.cli import main
from dataset_preprocess.layout import read_benchmark, read_index, read_texts
from dataset_preprocess.merge import merge_pretrain
from recbole_missrec.data.feature_file import read_feature_file

pytest_plugins = ["preprocess_fixtures"]  # tiny encoders and the raw Amazon sample

SHARED_PRETRAIN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pretrain")


@pytest.fixture
def merged(tmp_path, tiny_bert, atomic_domain):
    sources = [atomic_domain(name, seed) for seed, name in enumerate(["beauty", "toys", "books"])]
    output = str(tmp_path / "merged" / "three")
    options = {"model": tiny_bert, "chunk_size": 8, "show_progress": False}
    stats, _ = merge_pretrain(sources, output, text_options=options)
    return sources, output, stats, options


def domain_folder(output, name):
    return os.path.join(output, "domains", name)


def test_ids_are_prefixed_and_indices_contiguous(merged):
    _, output, stats, _ = merged
    items = read_index(os.path.join(output, "three.item2index"))
    users = read_index(os.path.join(output, "three.user2index"))
    expected_items, expected_users = [], []
    for position, name in enumerate(["beauty", "toys", "books"]):
        folder = domain_folder(output, name)
        expected_items += [f"{position}-{item}" for item in read_index(os.path.join(folder, f"{name}.item2index"))]
        expected_users += [f"{position}-{user}" for user in read_index(os.path.join(folder, f"{name}.user2index"))]
    assert items == expected_items and users == expected_users
    assert (stats["items"], stats["users"]) == (len(items), len(users))
    with open(os.path.join(output, "three.pt_datasets"), encoding="utf-8") as handle:
        assert handle.read().strip() == "beauty,toys,books"
    texts = read_texts(os.path.join(output, "three.text"))
    assert list(texts) == items and texts[items[0]].endswith('"beauty".')  # title only, unescaped


def test_rows_and_features_are_the_domains_shifted(merged):
    _, output, stats, _ = merged
    item_offset = user_offset = 0
    merged_rows = {split: list(read_benchmark(os.path.join(output, f"three.{split}.inter")))
                   for split in ("train", "valid", "test")}
    tables = {suffix: read_feature_file(os.path.join(output, f"three.{suffix}"), 32, min_rows=stats["items"])
              for suffix in ("feat1CLS", "feat2CLS")}
    cursor = {split: 0 for split in merged_rows}
    for domain in stats["provenance"]["domains"]:
        name, folder = domain["name"], domain_folder(output, domain["name"])
        assert (domain["item_offset"], domain["user_offset"]) == (item_offset, user_offset)
        for split, rows in merged_rows.items():
            own = list(read_benchmark(os.path.join(folder, f"{name}.{split}.inter")))
            shifted = [(user + user_offset, [item + item_offset for item in history], target + item_offset)
                       for user, history, target in own]
            assert rows[cursor[split]:cursor[split] + len(own)] == shifted
            cursor[split] += len(own)
        for suffix, table in tables.items():
            own = read_feature_file(os.path.join(folder, f"{name}.{suffix}"), 32, min_rows=domain["items"])
            np.testing.assert_array_equal(table[item_offset:item_offset + domain["items"]], own)
        item_offset += domain["items"]
        user_offset += domain["users"]
    assert item_offset == stats["items"] and all(cursor[s] == len(rows) for s, rows in merged_rows.items())
    assert not os.path.exists(os.path.join(output, "three.feat3CLS"))  # title-only domains: no image file
    assert stats["interactions"] == sum(d["stats"]["interactions"] for d in stats["provenance"]["domains"])


def test_rerun_reuses_processed_domains_and_features(merged, monkeypatch):
    sources, output, _, options = merged
    paths = [os.path.join(domain_folder(output, "toys"), f"toys.{suffix}") for suffix in ("inter", "feat1CLS")]
    before = [os.stat(path).st_mtime_ns for path in paths]
    from recbole_missrec.encoders import text as text_module

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")
    monkeypatch.setattr(text_module.TextEncoder, "__init__", refuse)
    merge_pretrain(sources, output, text_options=options)
    assert [os.stat(path).st_mtime_ns for path in paths] == before
    merge_pretrain(sources, output, max_history=3)  # other settings: the domains are processed again
    assert os.stat(paths[0]).st_mtime_ns != before[0]


def test_processed_domains_with_images_are_zero_filled(tmp_path, amazon_sample, atomic_domain):
    first = str(tmp_path / "Sample")
    main(["amazon", "--ratings", amazon_sample["ratings"], "--meta", amazon_sample["meta"], "--output-dir", first])
    image = np.random.default_rng(0).normal(size=(len(read_index(os.path.join(first, "Sample.item2index"))), 8))
    image.astype(np.float32).tofile(os.path.join(first, "Sample.feat3CLS"))
    second = atomic_domain("toys", 1)
    output = str(tmp_path / "mixed")
    main(["merge-pretrain", "--domains", first, second, "--output-dir", output, "--no-features"])
    stats = json.load(open(os.path.join(output, "mixed.stats.json"), encoding="utf-8"))
    table = read_feature_file(os.path.join(output, "mixed.feat3CLS"), 8, min_rows=stats["items"])
    n_first = stats["provenance"]["domains"][0]["items"]
    np.testing.assert_allclose(table[:n_first], image, rtol=1e-6)
    assert not table[n_first:].any()
    assert stats["provenance"]["zero_filled_features"] == {"feat3CLS": ["toys"]}
    assert stats["modalities"]["feat3CLS"]["items"] == n_first


@pytest.mark.skipif(not os.path.isdir(SHARED_PRETRAIN), reason="../shared/data/pretrain is not available")
def test_shared_pretrain_folders_are_accepted(tmp_path):
    source = os.path.join(SHARED_PRETRAIN, "amazon2014-toy")
    stats, _ = merge_pretrain([source], str(tmp_path / "toy_only"), text_options=None)
    assert stats["items"] > 10000 and stats["users"] > 15000
    assert os.path.isfile(tmp_path / "toy_only" / "toy_only.inter")
