import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, fake_dataset, model_config, tiny_pretrain_config, write_pretrain_dataset
import recbole_missrec.trainer
from recbole_missrec.model import MISSRec
from recbole_missrec.model.layers import item_drop
from recbole_missrec.model.missrec.views import VIEW_SEQ, VIEW_SEQ_LEN, VIEW_WORD_DROP, pretrain_view
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.trainer import CheckpointError, latest_checkpoint, load_state

SEQ = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10], [11, 0, 0, 0, 0, 0]])
LEN = torch.tensor([4, 6, 1])


def pretrain_model(dims=(10, 6), **overrides):
    torch.manual_seed(0)
    dataset = fake_dataset(n_items=12, dims=dims, augmented=True)
    settings = {"train_stage": "pretrain", "gather_negatives": True, "mask_false_negatives": False,
                "MAX_ITEM_LIST_LENGTH": 6, "lambda": 0.5}
    config = model_config(**{**settings, **overrides})
    model = MISSRec(config, dataset)
    model.discover_interests(torch.Generator().manual_seed(0))
    return model


def test_pretraining_builds_no_history_bias():
    """Pre-training ranks in-batch targets, not a history's items: the fine-tuning option adds nothing there."""
    assert pretrain_model(history_bias=True).history_bias is None


def pretrain_batch(target=(5, 11, 2)):
    view_seq, view_len, word_drop = pretrain_view(SEQ, LEN, 0.5, 0.5, torch.Generator().manual_seed(3))
    return {
        "item_id_list": SEQ, "item_length": LEN, "item_id": torch.tensor(target),
        VIEW_SEQ: view_seq, VIEW_SEQ_LEN: view_len, VIEW_WORD_DROP: word_drop,
    }


def test_item_drop_views_always_keep_the_first_item():
    seq = torch.tensor([[1, 2, 3, 4, 0, 0]] * 64)
    view_seq, view_len, _ = pretrain_view(seq, torch.tensor([4] * 64), 0.9, 1.0, torch.Generator().manual_seed(0))
    assert (view_seq[:, 0] == 1).all() and (view_len < 4).any()


def test_views_are_chosen_per_sequence_and_touch_only_real_positions():
    seq = torch.randint(1, 50, (400, 8))
    length = torch.randint(1, 9, (400,))
    seq[torch.arange(8) >= length[:, None]] = 0
    view_seq, view_len, word_drop = pretrain_view(seq, length, 0.3, 0.5, torch.Generator().manual_seed(0))
    item_dropped = view_len < length
    word_dropped = word_drop.any(dim=1)
    assert item_dropped.any() and word_dropped.any()  # both kinds in one batch
    assert not (item_dropped & word_dropped).any()
    assert torch.equal(view_seq[~item_dropped], seq[~item_dropped])  # word drop keeps ids and lengths
    assert not (word_drop & (seq == 0)).any()
    for row in torch.nonzero(item_dropped).flatten()[:20].tolist():  # survivors are a subsequence, in order
        kept = view_seq[row, : view_len[row]].tolist()
        rest = iter(seq[row, : length[row]].tolist())
        assert all(item in rest for item in kept) and kept[0] == seq[row, 0]
    again = pretrain_view(seq, length, 0.3, 0.5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(again, (view_seq, view_len, word_drop)))


def test_word_drop_switches_only_the_text_features():
    model = pretrain_model()
    ids = torch.tensor([[4, 6]])
    flags = torch.tensor([[True, False]])
    plain, dropped = model.modality_tokens(ids), model.modality_tokens(ids, flags)
    assert torch.equal(dropped[0, 1], plain[0, 1]) and torch.equal(dropped[0, 0, 1], plain[0, 0, 1])  # image kept
    assert torch.allclose(dropped[0, 0, 0], model.adapters["text"](model.text_aug_features[4]))
    # interests are looked up by id, so a word-drop view has the original's interest memory
    _, memory, _ = model.eval().encode(SEQ, LEN)
    _, view_memory, _ = model.encode(SEQ, LEN, torch.ones_like(SEQ, dtype=torch.bool))
    assert torch.equal(memory, view_memory)


@pytest.mark.parametrize("adapter", ["linear", "moe"])
def test_sequence_tokens_run_the_adapters_once_per_distinct_item_and_word_drop(adapter, monkeypatch):
    model = pretrain_model(adapter=adapter, n_exps=3).eval()
    seq = torch.tensor([[4, 4, 6, 0, 0, 0], [6, 4, 9, 9, 4, 0]])
    flags = torch.tensor([[True, False, False, False, False, False], [False, True, True, False, True, False]])
    rows = []
    original = model.modality_tokens
    monkeypatch.setattr(model, "modality_tokens", lambda ids, drop=None: rows.append(ids.numel()) or original(ids, drop))
    assert torch.allclose(model._sequence_tokens(seq, flags), original(seq, flags), atol=1e-6)  # [B, L, M, d]
    assert torch.allclose(model._sequence_tokens(seq), original(seq), atol=1e-6)
    # 12 positions; distinct (item, word drop) pairs: (0, F) (4, F) (4, T) (6, F) (9, F) (9, T); items 0 4 6 9
    assert rows == [6, 4]


def test_item_dropped_view_reads_every_modality_of_the_surviving_items():
    model = pretrain_model().eval()
    view_seq, view_len = item_drop(SEQ, LEN, torch.tensor([[True, False, True, True, True, True]] * 3))
    expected, memory, _ = model.encode(torch.tensor([[1, 3, 4]]), torch.tensor([3]))
    output, view_memory, _ = model.encode(view_seq[:1, :3], view_len[:1])
    assert torch.allclose(output, expected) and torch.allclose(view_memory, memory)


def test_pretrain_loss_has_three_weighted_terms_and_trains_the_network():
    model = pretrain_model().train()
    seq_item, seq_seq, penalty = model.calculate_loss(pretrain_batch()).values()
    assert all(torch.isfinite(term) for term in (seq_item, seq_seq, penalty))
    assert seq_seq.item() > 0 and penalty.item() > 0
    (seq_item + seq_seq + penalty).backward()
    for parameter in (model.adapters["text"].weight, model.adapters["img"].weight, model.fusion_factor,
                      model.transformer.encoder.layers[0].linear1.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_text_only_pretraining():
    model = pretrain_model(dims=(10,))
    assert model.fusion_factor is None and model.item_embedding is None
    assert all(torch.isfinite(term) for term in model.calculate_loss(pretrain_batch()).values())


def test_pretraining_needs_the_word_dropped_text_table():
    with pytest.raises(ValueError, match="plm_suffix_aug"):
        MISSRec(model_config(train_stage="pretrain"), fake_dataset())


def test_false_negative_masking_lowers_the_seq_item_loss():
    model = pretrain_model(mask_false_negatives=True)
    model.eval()
    masked_loss = model.calculate_loss(pretrain_batch(target=(5, 5, 2)))["seq_item"]
    model.duplicates = "none"
    assert masked_loss < model.calculate_loss(pretrain_batch(target=(5, 5, 2)))["seq_item"]


def test_pretraining_end_to_end_writes_periodic_weights_only_checkpoints(tmp_path, monkeypatch):
    write_pretrain_dataset(tmp_path)
    allocator_calls = []
    monkeypatch.setattr(recbole_missrec.trainer, "reuse_freed_memory", lambda: allocator_calls.append(1))
    result = run_recbole_missrec("MISSRec", "pt", config_dict=tiny_pretrain_config(tmp_path, epochs=3, save_step=2))
    assert allocator_calls == [1]  # the pre-training stage file turns reuse_freed_memory on
    saved = sorted(os.listdir(tmp_path / "saved"))
    assert saved == ["MISSRec-pt-pretrain-2.pth", "MISSRec-pt-pretrain-3.pth"]  # every save_step, plus the last
    checkpoint = load_state(result["checkpoint"])
    assert {"state_dict", "optimizer", "scheduler", "rng", "epoch", "history"} <= set(checkpoint)
    assert checkpoint["epoch"] == 2 and "text_features" not in checkpoint["state_dict"]
    assert "text_aug_features" not in checkpoint["state_dict"]
    history = result["history"]
    assert len(history) == 3 and all(record["sequences_per_second"] > 0 for record in history)
    assert history[-1]["loss_per_batch"][0] < history[0]["loss_per_batch"][0]


def test_pretraining_resumes_with_more_epochs_but_not_with_other_settings(tmp_path):
    """A constant-rate run may be extended (more epochs, another save_step); another learning rate would
    continue the stored epochs as if they had been trained with it, so it is refused."""
    write_pretrain_dataset(tmp_path)
    config = tiny_pretrain_config(tmp_path, epochs=1, save_step=1)
    run_recbole_missrec("MISSRec", "pt", config_dict=config)
    with pytest.raises(CheckpointError, match=r"MISSRec-pt-pretrain-1\.pth continues a run with other settings "
                                              r"\(learning_rate: 0\.001 -> 0\.01\)"):
        run_recbole_missrec("MISSRec", "pt", config_dict=dict(config, epochs=2, learning_rate=0.01), resume=True)
    extended = run_recbole_missrec("MISSRec", "pt", config_dict=dict(config, epochs=2, save_step=2), resume=True)
    assert [record["epoch"] for record in extended["history"]] == [0, 1]
    assert sorted(os.listdir(tmp_path / "saved")) == ["MISSRec-pt-pretrain-1.pth", "MISSRec-pt-pretrain-2.pth"]


def test_latest_checkpoint_orders_epochs_numerically(tmp_path):
    for epoch in (2, 10, 9):
        (tmp_path / f"MISSRec-pt-pretrain-{epoch}.pth").write_bytes(b"")
    (tmp_path / "MISSRec-pt-pretrain-99.pth.tmp").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path / "MISSRec-pt-pretrain")).endswith("-10.pth")
    assert latest_checkpoint(str(tmp_path / "other")) is None


KILL_DRIVER = """
import os, signal, sys
from recbole_missrec.trainer import PretrainTrainer

prepare = PretrainTrainer._prepare_batch
steps = {}


def dying(self, interaction):
    epoch = self._epoch
    steps[epoch] = steps.get(epoch, 0) + 1
    if epoch == int(os.environ["KILL_EPOCH"]) and steps[epoch] == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # a hard crash in the middle of an epoch
    return prepare(self, interaction)


PretrainTrainer._prepare_batch = dying
sys.path.insert(0, sys.argv.pop(1))
import run_recbole_missrec
run_recbole_missrec.main()
"""


def _cli(config_file, workdir, *extra, driver=None, env=None):
    command = [sys.executable]
    command += ["-c", driver, ROOT] if driver else [os.path.join(ROOT, "run_recbole_missrec.py")]
    command += ["-d", "pt", "--config_files", str(config_file), *extra]
    os.makedirs(workdir, exist_ok=True)
    # Bit-for-bit needs a fixed thread count: MKL otherwise adapts its threads to the machine's load.
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=workdir, env={**os.environ, **threads, **(env or {})}, capture_output=True,
                          text=True)


def test_killed_pretraining_resumes_bit_for_bit(tmp_path):
    write_pretrain_dataset(tmp_path)
    config = tiny_pretrain_config(tmp_path, epochs=4, save_step=2, lr_schedule="cosine")
    for run in ("straight", "crashed"):
        with open(tmp_path / f"{run}.yaml", "w") as handle:
            yaml.safe_dump({**config, "checkpoint_dir": str(tmp_path / run)}, handle)
    straight = _cli(tmp_path / "straight.yaml", tmp_path / "work1")
    assert straight.returncode == 0, straight.stderr[-3000:]

    crashed = _cli(tmp_path / "crashed.yaml", tmp_path / "work2", driver=KILL_DRIVER, env={"KILL_EPOCH": "2"})
    assert crashed.returncode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path / "crashed")) == ["MISSRec-pt-pretrain-2.pth"]  # epoch 3 was lost
    resumed = _cli(tmp_path / "crashed.yaml", tmp_path / "work2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = load_state(tmp_path / "straight" / "MISSRec-pt-pretrain-4.pth")
    actual = load_state(tmp_path / "crashed" / "MISSRec-pt-pretrain-4.pth")
    for name, value in expected["state_dict"].items():
        assert torch.equal(value, actual["state_dict"][name]), name
    for key, value in expected["optimizer"]["state"].items():
        assert all(torch.equal(value[k], actual["optimizer"]["state"][key][k]) for k in value)
    assert [r["train_loss"] for r in actual["history"]] == [r["train_loss"] for r in expected["history"]]
