"""From raw (user, item, timestamp) rows to indexed chronological sequences, as UniSRec/MISSRec did it.

Order of work: drop exact duplicate rows, drop items without usable text (a text-based model cannot
represent them), iterative k-core (removing a user can push an item below k and back), then index users
by first appearance in the input and items by first appearance while reading users' chronological
sequences in user order (reference §2.2). Leave-one-out splitting lives here too; writing is in
``layout``.
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_SEQUENCE = 3  # leave-one-out needs one history item, one validation target and one test target


@dataclass
class SequenceData:
    """One processed dataset in memory.

    ``interactions`` has integer columns ``user`` and ``item`` (indices) and ``timestamp``, sorted by user
    index and then chronologically; ``user_ids[u]``/``item_ids[i]`` are the original ids and
    ``item_texts[i]`` the text of item index ``i``.
    """

    user_ids: list
    item_ids: list
    item_texts: list
    interactions: pd.DataFrame

    def sequences(self):
        """Chronological item-index array of every user, in user-index order."""
        items = self.interactions["item"].to_numpy()
        bounds = np.flatnonzero(np.diff(self.interactions["user"].to_numpy())) + 1
        return np.split(items, bounds)


def _counts(frame):
    return {"interactions": len(frame), "users": frame["user"].nunique(), "items": frame["item"].nunique()}


def normalise_interactions(frame):
    """Columns user, item (strings) and timestamp (float); rows without a usable timestamp are dropped."""
    frame = frame[["user", "item", "timestamp"]].copy()
    frame["user"] = frame["user"].astype(str)
    frame["item"] = frame["item"].astype(str)
    frame["timestamp"] = pd.to_numeric(frame["timestamp"], errors="coerce")
    return frame.dropna(subset=["timestamp"]).reset_index(drop=True)


def keep_items_with_text(frame, texts):
    has_text = frame["item"].map(lambda item: bool(texts.get(item, "").strip()))
    return frame[has_text.to_numpy(dtype=bool)]


def k_core(frame, min_user, min_item):
    """Repeat until every user has >= min_user and every item >= min_item interactions."""
    while len(frame):
        user_counts = frame.groupby("user")["item"].transform("size")
        item_counts = frame.groupby("item")["user"].transform("size")
        keep = (user_counts >= min_user) & (item_counts >= min_item)
        if keep.all():
            break
        frame = frame[keep]
    return frame


def index_sequences(frame, texts):
    """Sort chronologically per user (ties keep input order) and assign user and item indices."""
    users = pd.unique(frame["user"])
    user_index = pd.Series(np.arange(len(users)), index=users)
    frame = frame.assign(user=user_index.loc[frame["user"]].to_numpy())
    order = np.lexsort((frame["timestamp"].to_numpy(), frame["user"].to_numpy()))  # stable: ties keep input order
    frame = frame.iloc[order].reset_index(drop=True)
    items = pd.unique(frame["item"])
    item_index = pd.Series(np.arange(len(items)), index=items)
    frame["item"] = item_index.loc[frame["item"]].to_numpy()
    return SequenceData(
        user_ids=[str(user) for user in users],
        item_ids=[str(item) for item in items],
        item_texts=[texts.get(item, "") for item in items],
        interactions=frame[["user", "item", "timestamp"]],
    )


def filter_and_index(frame, texts, min_count=5):
    """The whole filtering chain; returns (SequenceData, counts after each stage).

    Users also need at least three interactions, whatever ``min_count``, for leave-one-out.
    """
    frame = normalise_interactions(frame)
    report = {"raw": _counts(frame)}
    frame = frame.drop_duplicates(["user", "item", "timestamp"])
    report["deduplicated"] = _counts(frame)
    frame = keep_items_with_text(frame, texts)
    report["items_with_text"] = _counts(frame)
    frame = k_core(frame, max(min_count, MIN_SEQUENCE), min_count)
    report[f"{min_count}_core"] = _counts(frame)
    if frame.empty:
        raise ValueError(f"no interactions left after the text filter and {min_count}-core; stage counts: {report}")
    return index_sequences(frame, texts), report


def leave_one_out(sequence, max_history=50):
    """(train rows, valid row, test row) of one user's chronological sequence i_1..i_n, reference §2.2.

    A row is (history, target), history = the items before the target, truncated to the last
    ``max_history``. Train targets are i_2..i_{n-2}, valid i_{n-1}, test i_n.
    """
    sequence = list(sequence)
    n = len(sequence)
    if n < MIN_SEQUENCE:
        raise ValueError(f"leave-one-out needs at least {MIN_SEQUENCE} items per user, got {n}")

    def row(target):
        return sequence[max(0, target - max_history):target], sequence[target]

    return [row(target) for target in range(1, n - 2)], row(n - 2), row(n - 1)
