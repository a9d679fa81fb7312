"""Filtering, indexing and leave-one-out of dataset_preprocess.interactions on hand-made cases."""
import pandas as pd
import pytest

from dataset_preprocess.interactions import filter_and_index, k_core, leave_one_out


def frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def test_k_core_is_iterative():
    # u4 has 2 interactions; dropping u4 leaves item c with 1, dropping c leaves u3 with 1.
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2), ("u3", "a", 1), ("u3", "c", 2),
            ("u4", "c", 1), ("u4", "d", 2)]
    kept = k_core(frame(rows), 2, 2)
    assert sorted(kept["user"].unique()) == ["u1", "u2"]
    assert sorted(kept["item"].unique()) == ["a", "b"]
    one_pass = frame(rows).groupby("user").filter(lambda group: len(group) >= 2)
    assert "u3" in set(one_pass["user"])  # a single pass would have kept u3


def test_leave_one_out_rows_follow_the_reference_layout():
    sequence = [10, 11, 12, 13, 14, 15, 16]
    train, valid, test = leave_one_out(sequence, max_history=3)
    assert train == [([10], 11), ([10, 11], 12), ([10, 11, 12], 13), ([11, 12, 13], 14)]
    assert valid == ([12, 13, 14], 15)
    assert test == ([13, 14, 15], 16)
    assert leave_one_out([1, 2, 3]) == ([], ([1], 2), ([1, 2], 3))
    with pytest.raises(ValueError):
        leave_one_out([1, 2])


def test_indices_follow_first_appearance_and_ties_keep_input_order():
    rows = [("bob", "x", 5), ("ann", "z", 3), ("bob", "y", 5), ("ann", "x", 1), ("bob", "w", 1), ("ann", "y", 3)]
    texts = {item: f"text {item}" for item in "wxyz"}
    data, _ = filter_and_index(frame(rows), texts, min_count=1)
    assert data.user_ids == ["bob", "ann"]  # order of first appearance in the input
    sequences = [[data.item_ids[item] for item in sequence] for sequence in data.sequences()]
    assert sequences == [["w", "x", "y"], ["x", "z", "y"]]  # by time; ties (x,y at 5; z,y at 3) in input order
    assert data.item_ids == ["w", "x", "y", "z"]  # first appearance along bob's then ann's sequence
    assert data.item_texts == [texts[item] for item in data.item_ids]


def test_items_without_text_and_duplicates_are_dropped_before_the_core():
    rows = [(f"u{user}", item, user * 10 + step) for user in range(3) for step, item in enumerate("abcd")]
    rows.append(rows[0])
    texts = {"a": "alpha", "b": "beta", "c": " ", "d": "delta"}
    data, stages = filter_and_index(frame(rows), texts, min_count=3)
    assert set(data.item_ids) == {"a", "b", "d"}
    assert stages["raw"]["interactions"] == 13 and stages["deduplicated"]["interactions"] == 12
    assert stages["3_core"] == {"interactions": 9, "users": 3, "items": 3}
    with pytest.raises(ValueError, match="no interactions left"):
        filter_and_index(frame(rows), texts, min_count=4)
