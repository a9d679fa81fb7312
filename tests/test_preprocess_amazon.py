"""The `amazon` command on a synthetic raw Amazon sample: 5-core, chronology, leave-one-out, layout, statistics."""
import collections
import json
import os

import pytest

from dataset_preprocess.cli import main
from dataset_preprocess.interactions import leave_one_out
from dataset_preprocess.layout import BENCHMARK_HEADER, INTER_HEADER, TEXT_HEADER, read_benchmark, read_index

pytest_plugins = ["preprocess_fixtures"]  # tiny encoders and the raw Amazon sample


def reference_core(rows, texts, k):
    """Independent k-core over the distinct (user, item, time) rows of items with text."""
    kept = {(user, item, time) for item, user, _, time in rows if texts.get(item, "").strip()}
    while True:
        users = collections.Counter(user for user, _, _ in kept)
        items = collections.Counter(item for _, item, _ in kept)
        smaller = {row for row in kept if users[row[0]] >= k and items[row[1]] >= k}
        if smaller == kept:
            return kept
        kept = smaller


def processed(folder, name="Sample"):
    items = read_index(os.path.join(folder, f"{name}.item2index"))
    users = read_index(os.path.join(folder, f"{name}.user2index"))
    with open(os.path.join(folder, f"{name}.inter"), encoding="utf-8") as handle:
        assert next(handle).rstrip("\n") == INTER_HEADER
        inter = [line.rstrip("\n").split("\t") for line in handle]
    return items, users, [(int(user), int(item), int(time)) for user, item, time in inter]


@pytest.fixture(scope="module")
def sample_dir(amazon_sample, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("out") / "Sample")
    main(["amazon", "--ratings", amazon_sample["ratings"], "--meta", amazon_sample["meta"],
          "--output-dir", folder, "--max-history", "4"])
    return folder


def test_interactions_are_the_5_core_of_items_with_text(sample_dir, amazon_sample):
    items, users, inter = processed(sample_dir)
    got = {(users[user], items[item], time) for user, item, time in inter}
    expected = reference_core(amazon_sample["rows"], amazon_sample["titles"], 5)
    assert got == expected and len(inter) == len(expected)  # duplicate review written once
    assert not set(items) & amazon_sample["no_text"]
    assert "B000000030" not in items and "A99999USER" not in users  # removed only by iterating the core
    assert 0 < len(items) < len(amazon_sample["items"]) and 0 < len(users) < 46


def test_sequences_are_chronological_in_input_order_and_indexed_by_first_appearance(sample_dir, amazon_sample):
    items, users, inter = processed(sample_dir)
    assert [user for user, _, _ in inter] == sorted(user for user, _, _ in inter)
    by_user = collections.defaultdict(list)
    for user, item, time in inter:
        by_user[user].append((time, item))
    position = {(user, item): index for index, (item, user, _, _) in enumerate(amazon_sample["rows"])}
    for user, events in by_user.items():
        assert [time for time, _ in events] == sorted(time for time, _ in events)
        for (time_a, item_a), (time_b, item_b) in zip(events, events[1:]):
            if time_a == time_b:  # ties keep the order of the raw file
                assert position[(users[user], items[item_a])] < position[(users[user], items[item_b])]
    first_seen = list(dict.fromkeys(item for _, item, _ in inter))
    assert first_seen == list(range(len(items)))


def test_benchmark_files_are_leave_one_out_of_the_sequences(sample_dir):
    items, users, inter = processed(sample_dir)
    sequences = collections.defaultdict(list)
    for user, item, _ in inter:
        sequences[user].append(item)
    splits = {split: list(read_benchmark(os.path.join(sample_dir, f"Sample.{split}.inter")))
              for split in ("train", "valid", "test")}
    expected = {"train": [], "valid": [], "test": []}
    for user in range(len(users)):
        train, valid, test = leave_one_out(sequences[user], max_history=4)
        expected["train"] += [(user, history, target) for history, target in train]
        expected["valid"].append((user, *valid))
        expected["test"].append((user, *test))
    assert splits == expected
    assert all(len(history) <= 4 for rows in splits.values() for _, history, _ in rows)
    assert any(len(sequences[user]) > 6 for user in sequences)  # truncation was exercised
    with open(os.path.join(sample_dir, "Sample.train.inter"), encoding="utf-8") as handle:
        assert handle.readline().rstrip("\n") == BENCHMARK_HEADER


def test_text_file_and_statistics(sample_dir, amazon_sample):
    items, users, inter = processed(sample_dir)
    with open(os.path.join(sample_dir, "Sample.text"), encoding="utf-8") as handle:
        assert handle.readline().rstrip("\n") == TEXT_HEADER
        texts = dict(line.rstrip("\n").split("\t") for line in handle)
    assert list(texts) == items
    title = amazon_sample["titles"][items[0]].replace("&amp;", "&")
    assert texts[items[0]] == f"{title}. Industrial & Scientific Lab Tools. Acme."
    with open(os.path.join(sample_dir, "Sample.stats.json"), encoding="utf-8") as handle:
        stats = json.load(handle)
    assert (stats["users"], stats["items"], stats["interactions"]) == (len(users), len(items), len(inter))
    assert stats["average_length"] == round(len(inter) / len(users), 4)
    assert stats["benchmark_rows"]["test"] == len(users)
    assert stats["benchmark_rows"]["train"] == len(inter) - 3 * len(users)
    assert stats["modalities"]["text"]["coverage"] == 1.0
    assert stats["provenance"]["stages"]["5_core"]["interactions"] == len(inter)


def test_reviews_json_gives_the_same_dataset(sample_dir, amazon_sample, tmp_path):
    folder = str(tmp_path / "Sample")
    main(["amazon", "--reviews", amazon_sample["reviews"], "--meta", amazon_sample["meta"],
          "--output-dir", folder, "--max-history", "4"])
    for suffix in ("item2index", "user2index", "inter", "text", "train.inter", "valid.inter", "test.inter"):
        with open(os.path.join(folder, f"Sample.{suffix}"), "rb") as mine, \
                open(os.path.join(sample_dir, f"Sample.{suffix}"), "rb") as theirs:
            assert mine.read() == theirs.read(), suffix


@pytest.mark.parametrize("command", [[], ["amazon"], ["table"], ["download-images"], ["features"],
                                     ["features", "text"], ["features", "image"], ["merge-pretrain"], ["stats"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    assert stop.value.code == 0
    assert "usage: python -m dataset_preprocess" in capsys.readouterr().out


def test_table_command_reads_any_csv_with_named_columns(sample_dir, amazon_sample, tmp_path):
    interactions, items = tmp_path / "clicks.csv", tmp_path / "items.csv"
    interactions.write_text("ts,who,what\n" + "".join(
        f"{time},{user},{item}\n" for item, user, _, time in amazon_sample["rows"]))
    items.write_text("what,name\n" + "".join(
        f'{item},"{title}, with a comma"\n' for item, title in amazon_sample["titles"].items()))
    folder = str(tmp_path / "Sample")
    main(["table", "--interactions", str(interactions), "--items", str(items), "--user-field", "who",
          "--item-field", "what", "--time-field", "ts", "--text-fields", "name", "--output-dir", folder,
          "--max-history", "4"])
    for suffix in ("item2index", "user2index", "inter", "train.inter", "test.inter"):
        with open(os.path.join(folder, f"Sample.{suffix}"), "rb") as mine, \
                open(os.path.join(sample_dir, f"Sample.{suffix}"), "rb") as theirs:
            assert mine.read() == theirs.read(), suffix
    with open(os.path.join(folder, "Sample.text"), encoding="utf-8") as handle:
        assert list(handle)[1].rstrip("\n").endswith(", with a comma.")
