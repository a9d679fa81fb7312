"""Length-aware batches: the cost of a step follows the real items of its histories, not the padding.

RecBole pads every history to the longest one in the data (at most ``MAX_ITEM_LIST_LENGTH``) and batches
rows at random; the benchmark
datasets' histories average 4 items against a pad length of 50, so most of a step's work is padding.
RecBole has no length-aware loader, hence this module. Two switches (read here only):

- ``trim_batches``: every batch, training and evaluation, is cut to its longest history. Padded positions
  are masked everywhere, so this changes no result (up to dropout draws on padding). Evaluation rows are
  also visited in order of length, so that each evaluation batch is short; metrics average over users,
  so the order does not change them.
- ``length_buckets``: training batches are drawn from buckets of that many batches' worth of random rows,
  sorted by length inside the bucket (a "sortish" sampler): rows are shuffled within and across buckets
  every epoch from the loader's seeded generator (so a resumed run draws the same batches), and the
  batches are served in random order. 0 or None keeps RecBole's plain shuffled batches.
"""
import math

import torch
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader


def trim_to_longest(interaction, length_field, history_field, list_suffix):
    """Cut the history fields of a batch (``*<list_suffix>`` as wide as ``history_field``, the padded
    width of the data) to its longest history."""
    width = interaction[history_field].shape[1]
    longest = max(int(interaction[length_field].max()), 1) if len(interaction) else 1
    if longest >= width:
        return interaction
    for field in interaction.columns:
        value = interaction[field]
        if field.endswith(list_suffix) and value.dim() >= 2 and value.shape[1] == width:
            interaction[field] = value[:, :longest]
    return interaction


def sortish_batches(lengths, batch_size, bucket_batches, generator):
    """Index batches: random rows cut into buckets of ``bucket_batches`` batches, each bucket sorted by length
    (ties in random order) and cut into batches, then every batch of the epoch in random order."""
    order = torch.randperm(len(lengths), generator=generator)
    bucket = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), bucket):
        rows = order[start:start + bucket]
        rows = rows[torch.sort(lengths[rows], stable=True).indices]
        batches += list(rows.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class LengthAwareMixin:
    """Serves the loader's batches in its own order and trims them (see the module docstring)."""

    def _setup_length_aware(self, config):
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.list_suffix = config["LIST_SUFFIX"]
        self.history_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.trim = bool(config["trim_batches"])

    def _lengths(self):
        return self._dataset.inter_feat[self.length_field]

    def _index_batches(self):
        raise NotImplementedError

    def __len__(self):
        return math.ceil(self.sample_size / self.step)

    def __iter__(self):
        for index in self._index_batches():
            yield self.collate_fn(index.numpy())

    def _trimmed(self, interaction):
        if not self.trim:
            return interaction
        return trim_to_longest(interaction, self.length_field, self.history_field, self.list_suffix)


class LengthAwareTrainDataLoader(LengthAwareMixin, TrainDataLoader):
    """RecBole's TrainDataLoader with trimmed and (optionally) length-bucketed batches."""

    def __init__(self, config, dataset, sampler, shuffle=True):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._setup_length_aware(config)
        self.bucket_batches = int(config["length_buckets"] or 0)

    def _index_batches(self):
        if self.bucket_batches > 0 and self.shuffle:
            return sortish_batches(self._lengths(), self.step, self.bucket_batches, self.generator)
        order = torch.randperm(self.sample_size, generator=self.generator) if self.shuffle else torch.arange(self.sample_size)
        return list(order.split(self.step))

    def collate_fn(self, index):
        return self._trimmed(super().collate_fn(index))


class LengthAwareEvalDataLoader(LengthAwareMixin, FullSortEvalDataLoader):
    """RecBole's full-ranking loader for sequential models, visiting rows by length and trimming batches."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._setup_length_aware(config)

    def _index_batches(self):
        order = torch.sort(self._lengths(), stable=True).indices if self.trim else torch.arange(self.sample_size)
        return list(order.split(self.step))

    def collate_fn(self, index):
        interaction, history, positive_u, positive_i = super().collate_fn(index)
        return self._trimmed(interaction), history, positive_u, positive_i


def uses_length_aware_loaders(config):
    return bool(config["trim_batches"]) or bool(config["length_buckets"])


def length_aware(loader, config):
    """The same loader with length-aware batches, when the config asks for them and the loader is one of
    RecBole's sequential train or full-ranking loaders; otherwise the loader unchanged."""
    if not uses_length_aware_loaders(config) or not loader.is_sequential:
        return loader
    if type(loader) is TrainDataLoader:
        return LengthAwareTrainDataLoader(config, loader._dataset, loader._sampler, shuffle=loader.shuffle)
    if type(loader) is FullSortEvalDataLoader:
        return LengthAwareEvalDataLoader(config, loader._dataset, loader._sampler)
    return loader


def data_preparation(config, dataset):
    """RecBole's ``data_preparation`` with length-aware train and evaluation loaders where configured."""
    train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
    return tuple(length_aware(loader, config) for loader in (train_data, valid_data, test_data))
