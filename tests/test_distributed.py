"""Data-parallel training: 2 gloo processes on CPU, launched by torchrun exactly as a user would."""
import glob
import json
import os
import socket
import subprocess
import sys

import pytest
import recbole.utils.utils
import torch
from recbole.data import data_preparation

from conftest import ROOT, tiny_pretrain_config, tiny_run_config, write_benchmark_dataset, write_pretrain_dataset
from recbole_missrec import distributed, quick_start
from recbole_missrec.model import MISSRec
from recbole_missrec.config import PluginConfig
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.trainer import PluginTrainer, load_state
from recbole_missrec.utils import create_dataset

DRIVER = """
import json, os, sys
sys.path.insert(0, os.environ["PLUGIN_ROOT"])
from recbole_missrec import distributed
from recbole_missrec.quick_start import run_recbole_missrec

with open(os.environ["DDP_RUNS"]) as handle:
    for model, dataset, config in json.load(handle):
        run_recbole_missrec(model, dataset, config_dict=config)
distributed.shutdown()
"""


def one_step(config, checkpoint_dir):
    """One optimisation step on the whole train split (one global batch), plain SGD, no dropout: the
    updated weights are then a direct image of the gradient."""
    config.update(epochs=1, train_batch_size=4096, hidden_dropout_prob=0.0, learner="sgd", learning_rate=0.5,
                  checkpoint_dir=str(checkpoint_dir))
    return config


def saved_weights(folder):
    (path,) = glob.glob(os.path.join(folder, "*.pth"))
    return load_state(path)["state_dict"]


def test_ddp_step_equals_single_process_step_on_the_global_batch(tmp_path):
    write_pretrain_dataset(tmp_path)
    write_benchmark_dataset(tmp_path)
    runs = {  # folder: (model, dataset, config)
        "pt": ("MISSRec", "pt", tiny_pretrain_config(tmp_path, gather_negatives=True, mask_false_negatives=True)),
        "toy": ("MISSRec", "toy", tiny_run_config(tmp_path, topk=[5, 10], train_stage="transductive_ft")),
        # augmentations drawn on the global batch, gathered negatives, 3 items without an image
        "msm4sr": ("MSM4SR", "toy", tiny_run_config(
            tmp_path, train_stage="pretrain", pretrain_select="fixed_epochs", save_step=1, gather_negatives=True,
            attn_dropout_prob=0.0, adaptor_dropout_prob=0.0, clip_grad_norm=None)),
    }
    with open(tmp_path / "runs.json", "w") as handle:
        json.dump([(model, dataset, one_step(dict(config), tmp_path / "ddp" / name))
                   for name, (model, dataset, config) in runs.items()], handle)
    (tmp_path / "driver.py").write_text(DRIVER)
    workdir = tmp_path / "ddp_work"
    workdir.mkdir()
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "driver.py")],
        cwd=workdir, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PLUGIN_ROOT": ROOT, "DDP_RUNS": str(tmp_path / "runs.json"), "OMP_NUM_THREADS": "1"},
    )
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-4000:]
    log_files = os.listdir(workdir / "log" / "MISSRec")
    assert len(log_files) == 2 and len(os.listdir(workdir / "log" / "MSM4SR")) == 1  # one per run: rank 0 only
    # TensorBoard folders are named after rank 0's log file; other ranks would add "model-<time>" ones
    log_files += os.listdir(workdir / "log" / "MSM4SR")
    assert set(os.listdir(workdir / "log_tensorboard")) <= {name.removesuffix(".log") for name in log_files}

    for name, (model, dataset, config) in runs.items():
        result = run_recbole_missrec(model, dataset, config_dict=one_step(config, tmp_path / "single" / name))
        assert result["world_size"] == 1
        single, ddp = saved_weights(tmp_path / "single" / name), saved_weights(tmp_path / "ddp" / name)
        for key, value in single.items():
            assert torch.allclose(ddp[key].float(), value.float(), rtol=1e-4, atol=1e-5), (name, key)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmulatedRanks:
    """One process that trains as ``world`` data-parallel ranks would: each global batch is cut into the
    ranks' shares and each share's loss is computed with that rank's dropout stream (rank 0 the run's,
    rank r>0 seeded seed + r, as ``distributed.seed_rank`` does), weighted as ``distributed.shard`` weighs
    it and averaged as DDP averages gradients."""

    def __init__(self, seed, world):
        self.world = world
        self.states = [torch.get_rng_state()] + [torch.manual_seed(seed + r).get_state() for r in range(1, world)]
        torch.set_rng_state(self.states[0])

    def __call__(self, trainer, interaction):
        interaction = trainer._prepare_batch(interaction)
        n, total = len(interaction), 0.0
        for r in range(self.world):
            start, stop = n * r // self.world, n * (r + 1) // self.world
            torch.set_rng_state(self.states[r])
            loss = trainer.model.calculate_loss(interaction[start:stop])
            self.states[r] = torch.get_rng_state()
            total = total + self.world * (stop - start) / n * loss / self.world
        return total


def test_two_nodes_equal_one_process_over_several_adam_steps_with_dropout(tmp_path, monkeypatch):
    """torchrun --nnodes 2 (one process each, gloo over localhost) against one process emulating both ranks."""
    write_benchmark_dataset(tmp_path, n_users=60)
    config = tiny_run_config(tmp_path, topk=[5, 10], train_stage="transductive_ft", epochs=2, train_batch_size=48,
                             hidden_dropout_prob=0.2, length_buckets=2)
    with open(tmp_path / "runs.json", "w") as handle:
        json.dump([("MISSRec", "toy", dict(config, checkpoint_dir=str(tmp_path / "nodes")))], handle)
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PLUGIN_ROOT": ROOT, "DDP_RUNS": str(tmp_path / "runs.json"), "OMP_NUM_THREADS": "1"}
    port = free_port()
    nodes = []
    for node in range(2):
        workdir = tmp_path / f"node{node}"
        workdir.mkdir()
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                   "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                   str(tmp_path / "driver.py")]
        nodes.append(subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(output[-3000:] for output in outputs)

    emulate = None

    def emulated(trainer, interaction):
        return emulate(trainer, interaction)

    real_build = quick_start.build_model

    def build_then_split_streams(*args, **kwargs):
        nonlocal emulate
        built = real_build(*args, **kwargs)
        emulate = EmulatedRanks(config["seed"], 2)
        return built

    monkeypatch.setattr(quick_start, "build_model", build_then_split_streams)
    monkeypatch.setattr(PluginTrainer, "_step_loss", emulated)
    result = run_recbole_missrec("MISSRec", "toy", config_dict=dict(config, checkpoint_dir=str(tmp_path / "single")))
    assert len(result["history"]) == 2 and len(train_batches(config)) > 2  # several Adam steps
    single, ddp = saved_weights(tmp_path / "single"), saved_weights(tmp_path / "nodes")
    for key, value in single.items():
        other, value = ddp[key].float(), value.float()
        if key.endswith("in_proj_bias"):  # [query | key | value] biases
            # The key bias cannot change attention (softmax is shift-invariant per query), so its true
            # gradient is 0 and Adam's normalisation turns rounding noise into steps: compare the others.
            dim = value.shape[0] // 3
            other, value = torch.cat([other[:dim], other[2 * dim:]]), torch.cat([value[:dim], value[2 * dim:]])
        assert torch.allclose(other, value, rtol=1e-4, atol=1e-6), key


def train_batches(config):
    total = sum(1 for line in open(os.path.join(config["data_path"], "toy", "toy.train.inter"))) - 1
    return range(0, total, config["train_batch_size"])


def test_shares_cover_the_global_batch_and_weigh_it_evenly(monkeypatch):
    batch = list(range(7))
    shares = []
    for me in range(3):
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        monkeypatch.setattr(distributed, "rank", lambda me=me: me)
        shares.append(distributed.shard(batch))
    assert [rows for rows, _ in shares] == [[0, 1], [2, 3], [4, 5, 6]]
    # DDP averages the ranks' weighted share means: that is the mean over the global batch
    assert sum(weight * sum(rows) / len(rows) for rows, weight in shares) / 3 == pytest.approx(sum(batch) / 7)
    assert [weight for _, weight in shares] == pytest.approx([6 / 7, 6 / 7, 9 / 7])
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert distributed.shard([0, 1]) == ([1], 0.0)  # fewer rows than ranks: a weightless stand-in row


class LosingTheFolderRace:
    """``os`` as RecBole's ensure_dir sees it when another rank creates the folder between its check and
    its makedirs: the check says missing, makedirs says it exists."""
    path = os.path

    @staticmethod
    def makedirs(name, *args, **kwargs):
        raise FileExistsError(17, "File exists", name)


def test_a_rank_that_loses_the_checkpoint_folder_race_still_starts(tmp_path, monkeypatch):
    write_benchmark_dataset(tmp_path)
    config = PluginConfig(model=MISSRec, dataset="toy", config_dict=tiny_run_config(tmp_path))
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = MISSRec(config, train_data._dataset)
    monkeypatch.setattr(recbole.utils.utils, "os", LosingTheFolderRace)
    PluginTrainer(config, model)
    assert os.path.isdir(config["checkpoint_dir"])
