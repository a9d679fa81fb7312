"""Shared fixtures: isolation from RecBole's side effects, tiny synthetic datasets and models."""
import contextlib
import os
import sys
import types
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

from recbole_missrec.data.feature_store import store_from_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """RecBole's Config parses sys.argv and writes log/, log_tensorboard/ and saved/ into the working
    directory; the ml-100k feature cache lives under RECBOLE_MISSREC_CACHE."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.setenv("RECBOLE_MISSREC_CACHE", str(tmp_path / "cache"))
    return tmp_path


class ModelConfig(dict):
    """A dict that answers None for unknown keys, like RecBole's Config."""

    def __missing__(self, key):
        return None


def plugin_defaults(model="MISSRec", stage=None):
    """overall.yaml, the model's yaml and (``stage``: pretrain | finetune) its stage file, as the plugin's
    Config layers them."""
    names = ["overall.yaml", os.path.join("model", f"{model}.yaml")]
    if stage:
        names.append(os.path.join("model", f"{model}.{stage}.yaml"))
    settings = {}
    for name in names:
        with open(os.path.join(ROOT, "properties", name)) as handle:
            settings.update(yaml.safe_load(handle))
    return settings


def model_config(**overrides):
    config = ModelConfig(plugin_defaults())
    config.update(
        USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", LIST_SUFFIX="_list", ITEM_LIST_LENGTH_FIELD="item_length",
        NEG_PREFIX="neg_", MAX_ITEM_LIST_LENGTH=8, device="cpu", train_stage="transductive_ft",
        hidden_size=16, inner_size=32, n_heads=2, hidden_dropout_prob=0.0,
    )
    config.update(overrides)
    return config


def fake_dataset(n_items=12, dims=(10, 6), missing_rows=(3, 5), seed=0, augmented=False):
    """An object with what a plugin model reads from a MultiModalDataset: the item count and one feature
    store per modality (and the word-dropped text store, ``text_aug``, when ``augmented``).

    Items in ``missing_rows`` lack the last modality (all-zero row); row 0 is the padding item.
    """
    generator = torch.Generator().manual_seed(seed)
    names = ("text", "img")[: len(dims)]
    tables = {}
    for name, dim in zip(names, dims):
        table = torch.randn(n_items, dim, generator=generator)
        table[0] = 0
        tables[name] = table
    tables[names[-1]][list(missing_rows)] = 0
    if augmented:
        tables["text_aug"] = tables["text"] + 0.5
        tables["text_aug"][0] = 0
    stores = {name: store_from_rows(table.numpy()) for name, table in tables.items()}
    return types.SimpleNamespace(num=lambda field: n_items, item_features=stores)


def write_benchmark_dataset(root, name="toy", n_users=40, n_items=30, text_dim=16, img_dim=12,
                            missing_img=(2, 7, 11), seed=0, atomic=False):
    """A small dataset in the UniSRec layout the plugin reads (or a plain atomic .inter with timestamps).

    Returns the dataset folder. Item tokens are 0..n_items-1 = feature rows.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    histories = []
    for _ in range(n_users):
        length = int(rng.integers(5, 10))
        start = int(rng.integers(0, n_items))
        histories.append([(start + 2 * step + int(rng.integers(0, 2))) % n_items for step in range(length)])
    if atomic:
        with open(os.path.join(folder, f"{name}.inter"), "w") as handle:
            handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
            for user, items in enumerate(histories):
                for t, item in enumerate(items):
                    handle.write(f"{user}\t{item}\t{1000 * user + t}\n")
    else:
        rows = {"train": [], "valid": [], "test": []}
        for user, items in enumerate(histories):
            n = len(items)
            for k in range(1, n - 2):
                rows["train"].append((user, items[max(0, k - 50):k], items[k]))
            rows["valid"].append((user, items[: n - 2], items[n - 2]))
            rows["test"].append((user, items[: n - 1], items[n - 1]))
        for split, split_rows in rows.items():
            with open(os.path.join(folder, f"{name}.{split}.inter"), "w") as handle:
                handle.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
                for user, history, target in split_rows:
                    handle.write(f"{user}\t{' '.join(map(str, history))}\t{target}\n")
    # Features carry the item's "position on the cycle" so that the next item is learnable.
    angle = 2 * np.pi * np.arange(n_items) / n_items
    base = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    text = np.concatenate([base, 0.1 * rng.standard_normal((n_items, text_dim - 2))], axis=1).astype(np.float32)
    image = np.concatenate([base, 0.1 * rng.standard_normal((n_items, img_dim - 2))], axis=1).astype(np.float32)
    image[list(missing_img)] = 0
    text.tofile(os.path.join(folder, f"{name}.feat1CLS"))
    image.tofile(os.path.join(folder, f"{name}.feat3CLS"))
    return folder


def reevaluated_test_result(checkpoint):
    """The test metrics of a saved checkpoint, evaluated afresh from the file alone: what a run must report
    as its ``test_result`` (RecBole's rounding included)."""
    from recbole_missrec.quick_start import load_data_and_model
    from recbole_missrec.trainer import PluginTrainer

    config, model, _, _, _, test_data = load_data_and_model(checkpoint)
    return dict(PluginTrainer(config, model).evaluate(test_data, load_best_model=False, show_progress=False))


def check_scores_offset(plain, biased, make_batch, offset, targets):
    """``biased`` (``history_bias`` set) scores as ``plain`` plus ``offset`` on each row's own history items, in
    ``full_sort_predict`` and ``predict`` (candidates ``targets``). ``make_batch(targets)``: a test module's batch
    of histories and candidates."""
    interaction = make_batch()
    hits = torch.zeros(len(interaction["item_id_list"]), plain.n_items, dtype=torch.bool)
    for row, (items, length) in enumerate(zip(interaction["item_id_list"], interaction["item_length"])):
        hits[row, items[:length]] = True
    expected = plain.full_sort_predict(interaction) + hits * offset
    assert torch.allclose(biased.full_sort_predict(interaction), expected, atol=1e-5)
    paired = biased.predict(make_batch(targets))
    assert torch.allclose(paired, expected[torch.arange(len(targets)), torch.tensor(targets)], atol=1e-5)


def check_history_offset(plain, biased, make_batch, offset, targets):
    """``check_scores_offset``, and ``biased`` reports the offset as ``history_offset`` (the serving hook)."""
    check_scores_offset(plain, biased, make_batch, offset, targets)
    assert biased.history_offset().item() == pytest.approx(offset) and plain.history_offset() is None


def tiny_run_config(root, **overrides):
    """config_dict for a fast end-to-end run on a dataset written by write_benchmark_dataset."""
    config = {
        "data_path": str(root), "checkpoint_dir": os.path.join(str(root), "saved"),
        "benchmark_filename": ["train", "valid", "test"], "alias_of_item_id": ["item_id_list"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "plm_size": 16, "img_size": 12, "hidden_size": 32, "inner_size": 32, "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 10, "epochs": 2, "train_batch_size": 64, "eval_batch_size": 64,
        "seed": 7, "use_gpu": False, "state": "WARNING", "show_progress": False,
    }
    config.update(overrides)
    return config


def write_pretrain_dataset(root, name="pt", n_users=60, n_items=40, text_dim=16, seed=1):
    """A text-only pre-training set in the merged layout: benchmark splits, ``.feat1CLS`` and its word-dropped
    twin ``.feat2CLS`` (here the text features plus noise), no image file. Returns the folder."""
    folder = write_benchmark_dataset(root, name, n_users=n_users, n_items=n_items, text_dim=text_dim, seed=seed)
    os.remove(os.path.join(folder, f"{name}.feat3CLS"))
    text = np.fromfile(os.path.join(folder, f"{name}.feat1CLS"), dtype=np.float32).reshape(n_items, text_dim)
    noise = np.random.default_rng(seed).standard_normal(text.shape).astype(np.float32)
    (text + 0.3 * noise).tofile(os.path.join(folder, f"{name}.feat2CLS"))
    with open(os.path.join(folder, f"{name}.pt_datasets"), "w") as handle:
        handle.write("domainA,domainB\n")
    return folder


def tiny_pretrain_config(root, **overrides):
    """config_dict for a fast pre-training run on a dataset written by write_pretrain_dataset."""
    config = tiny_run_config(
        root, train_stage="pretrain", epochs=2, save_step=1, train_batch_size=32, plm_size=16, img_size=None,
        hidden_dropout_prob=0.1,
    )
    config.update(overrides)
    return config


@contextlib.contextmanager
def training_stops_at_epoch(epoch, error):
    """Training epoch ``epoch`` raises ``error`` before it starts: a run killed between two epochs."""
    from recbole_missrec.trainer import EpochHistoryMixin

    train_epoch = EpochHistoryMixin._train_epoch

    def stopping(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == epoch:
            raise error
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    with mock.patch.object(EpochHistoryMixin, "_train_epoch", stopping):
        yield
