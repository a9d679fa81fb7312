"""One modality's item features, aligned to RecBole's internal item ids (row 0 = padding).

Every model family reads item features the same way: a table ``[N, S, D]`` of up to S vectors per item
(S = 1 for the one-vector ``.featXCLS`` files; several for sentences or image keywords), a slot mask
``[N, S]`` of the real vectors and a presence flag ``[N]`` (the item has this modality at all). A missing
modality is zeros plus a False flag, never an error. RecBole has no notion of item feature tables laid
out by item token, hence this module.
"""
from typing import NamedTuple

import numpy as np
import torch

from recbole_missrec.data.feature_file import FeatureFileError, read_feature_file, read_multi_vector_file


class FeatureStore(NamedTuple):
    table: torch.Tensor  # [N, S, D] float32; padding row and absent slots are zeros
    slot_mask: torch.Tensor  # [N, S] bool: real vectors
    present: torch.Tensor  # [N] bool: the item has this modality

    @property
    def dim(self):
        return self.table.shape[-1]

    @property
    def slots(self):
        return self.table.shape[1]

    def normalised(self, norm, divisor=None, scale=1.0):
        """This store with its vectors rescaled: ``l2`` = every vector unit length; ``mean`` = the whole
        table divided by its mean vector norm (relative norms kept), or by ``divisor`` when given (rows
        added later are scaled like the table they join); ``none`` = unchanged. Encoders differ by an order
        of magnitude in output norm (CLIP image rows ~10, sentence encoders 1), which would otherwise set
        how much each modality weighs wherever tokens of several modalities are summed. ``scale`` then
        multiplies every vector: the common length itself matters to a freshly initialised adapter, as it
        sets how large the content tokens start against the ID embeddings (README, "feature scale")."""
        if not scale > 0:
            raise ValueError(f"feature_scale={scale!r}: it multiplies every feature vector, so it must be > 0")
        if norm in (None, "none"):
            table = self.table
        elif norm == "l2":
            table = self.table / self.table.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        elif norm == "mean":
            table = self.table / (divisor or self.mean_norm())
        else:
            raise ValueError(f"feature_norm={norm!r} is not supported; use none, l2 or mean")
        if scale != 1.0:
            table = table * scale
        return self if table is self.table else self._replace(table=table)

    def mean_norm(self):
        """Mean length of the real vectors (1.0 when there is none): the divisor of ``normalised("mean")``."""
        real = self.table.norm(dim=-1)[self.slot_mask]
        return float(real.mean()) if real.numel() else 1.0

    def pooled(self):
        """[N, D]: one vector per item, the mean of its real slots (the vector itself when S = 1)."""
        if self.slots == 1:
            return self.table[:, 0]
        weights = self.slot_mask.to(self.table.dtype).unsqueeze(-1)  # [N, S, 1]
        return (self.table * weights).sum(1) / weights.sum(1).clamp_min(1)

    def extended(self, table, slot_mask):
        """This store with more items appended (rows ``table`` [n, S', D], ``slot_mask`` [n, S']); the slot
        count grows to the larger of the two."""
        slots = max(self.slots, table.shape[1])
        own = _pad_slots(self.table, self.slot_mask, slots)
        new = _pad_slots(table.to(self.table.dtype), slot_mask, slots)
        return FeatureStore(torch.cat([own[0], new[0]]), torch.cat([own[1], new[1]]),
                            torch.cat([self.present, new[1].any(dim=1)]))


def _pad_slots(table, slot_mask, slots):
    extra = slots - table.shape[1]
    if extra == 0:
        return table, slot_mask
    return (torch.cat([table, table.new_zeros(table.shape[0], extra, table.shape[2])], dim=1),
            torch.cat([slot_mask, slot_mask.new_zeros(slot_mask.shape[0], extra)], dim=1))


def store_from_rows(rows):
    """A store with one vector per item from a [N, D] float32 array (an all-zero row = missing)."""
    table = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    present = table.ne(0).any(dim=1)
    return FeatureStore(table.unsqueeze(1), present.unsqueeze(1), present)


def read_raw_store(path, dim, item_tokens):
    """Store from a raw ``.featXCLS`` file whose row r is the item with token ``r``.

    item_tokens: the tokens of internal ids 1..N-1 (RecBole's ``field2id_token[item][1:]``).
    """
    rows = token_rows(item_tokens, path)
    table = read_feature_file(path, dim, min_rows=int(rows.max()) + 1 if rows.size else 0)
    aligned = np.zeros((len(item_tokens) + 1, table.shape[1]), dtype=np.float32)
    aligned[1:] = table[rows]
    return store_from_rows(aligned)


def read_npz_store(path, dim, item_tokens, max_slots=None):
    """Store from a multi-vector ``.npz`` file (see ``write_multi_vector_file``), items matched by token.

    Items absent from the file, or with no vector, lack the modality. ``max_slots`` keeps each item's
    first vectors. A file that knows none of the dataset's items is refused: it belongs to another dataset.
    """
    items, offsets, vectors = read_multi_vector_file(path, dim)
    position = {token: index for index, token in enumerate(items.tolist())}
    counts = np.diff(offsets)
    slots = max(1, int(counts.max()) if counts.size else 1)
    slots = min(slots, max_slots) if max_slots else slots
    n = len(item_tokens) + 1
    table = np.zeros((n, slots, vectors.shape[1]), dtype=np.float32)
    mask = np.zeros((n, slots), dtype=bool)
    found = 0
    for row, token in enumerate(item_tokens, start=1):
        index = position.get(str(token))
        if index is None:
            continue
        found += 1
        block = vectors[offsets[index]:offsets[index + 1]][:slots]
        table[row, :len(block)] = block
        mask[row, :len(block)] = True
    if item_tokens.size and not found:
        raise FeatureFileError(
            f"{path}: none of the dataset's {len(item_tokens)} item tokens is in the file's `items` (e.g. "
            f"{str(item_tokens[0])!r}); it was built for another dataset or another item index"
        )
    table_t, mask_t = torch.from_numpy(table), torch.from_numpy(mask)
    return FeatureStore(table_t, mask_t, mask_t.any(dim=1))


def read_store(path, dim, item_tokens, max_slots=None):
    """The reader by file type: ``.npz`` = several vectors per item, anything else = raw one-vector rows."""
    if str(path).endswith(".npz"):
        return read_npz_store(path, dim, item_tokens, max_slots)
    return read_raw_store(path, dim, item_tokens)


def token_rows(item_tokens, path):
    """File row of every item token (raw files are indexed by integer token)."""
    try:
        rows = np.array([int(token) for token in item_tokens], dtype=np.int64)
    except ValueError:
        bad = next(token for token in item_tokens if not str(token).lstrip("-").isdigit())
        raise FeatureFileError(
            f"item token {bad!r} is not a row index of {path}. Raw feature files are indexed by item token, so "
            f"tokens must be integers 0..N-1: convert the data with `python -m dataset_preprocess` (it writes "
            f".item2index and index tokens), or store the features as a multi-vector .npz keyed by token."
        ) from None
    if rows.size and rows.min() < 0:
        raise FeatureFileError(f"{path}: negative item token {rows.min()}")
    return rows
