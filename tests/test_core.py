"""The generic core: the one-pass config and its packaged yaml, stages found by name, RecBole's models and
flows (S3Rec's two stages), a user's own model class, hyper-parameter tuning, loading a trained model."""
import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils.case_study import full_sort_topk
from torch import nn

from conftest import ROOT, tiny_run_config, write_benchmark_dataset
from recbole_missrec import paths
from recbole_missrec.config import PluginConfig
from recbole_missrec.model import MISSRec
from recbole_missrec.quick_start import load_data_and_model, run_recbole_missrec
from recbole_missrec.trainer import (ALLOCATOR_VARIABLES, CheckpointError, PluginTrainer, PretrainTrainer, load_state,
                                    release_freed_memory, reuse_freed_memory)
from recbole_missrec.utils import get_model, get_trainer, stage_kind


def test_config_layers_every_source_in_priority_order(tmp_path, monkeypatch):
    user = tmp_path / "user.yaml"
    user.write_text("epochs: 11\nlambda: 0.5\ngamma: 0.5\n")
    monkeypatch.setattr(sys, "argv", ["run", "--gamma=0.125"])
    config = PluginConfig(model="MISSRec", dataset="ml-100k", config_file_list=[str(user)],
                          config_dict={"train_stage": "pretrain", "lambda": 0.25, "gamma": 0.3})
    assert config["topk"] == [10, 50]  # overall.yaml
    assert config["n_heads"] == 4  # the model's yaml
    assert config["interest_ratio"] == 0.02  # the stage file (pretrain, as asked) over the model's 0.5
    assert config["MAX_ITEM_LIST_LENGTH"] == 10  # the dataset's yaml
    assert config["epochs"] == 11  # the user's file over the dataset's 3 and the stage's 100
    assert config["lambda"] == 0.25  # config_dict over the user's file
    assert config["gamma"] == 0.125  # the command line over everything
    finetune = PluginConfig(model="MISSRec", dataset="ml-100k")
    assert finetune["train_stage"] == "transductive_ft" and finetune["freeze_backbone"] is True
    assert finetune["pretrain_select"] is None and finetune["interest_ratio"] == 0.5
    assert config["reuse_freed_memory"] is True and finetune["reuse_freed_memory"] is False
    assert PluginConfig(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None})["topk"] == [10, 50]


def test_the_plugin_yaml_ships_inside_the_package(tmp_path):
    """A plain `pip install .` must find the yaml from any folder: build the wheel from a copy of the tree."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for folder in ("properties", "recbole_missrec", "dataset_preprocess"):
        shutil.copytree(os.path.join(ROOT, folder), source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = os.listdir(tmp_path / "dist")
    names = zipfile.ZipFile(tmp_path / "dist" / wheel).namelist()
    yaml_files = sorted(os.path.relpath(os.path.join(folder, name), os.path.join(ROOT, "properties"))
                        for folder, _, files in os.walk(os.path.join(ROOT, "properties")) for name in files)
    assert all(f"recbole_missrec/properties/{name}" in names for name in yaml_files)
    assert not any(name.startswith("properties/") for name in names)


def test_the_yaml_folder_is_found_packaged_first_then_in_the_source_tree(tmp_path, monkeypatch):
    assert paths.properties_dir() == os.path.join(ROOT, "properties")  # this checkout: the source tree's folder
    package = tmp_path / "site" / "recbole_missrec"
    (package / "properties").mkdir(parents=True)
    (package / "properties" / "overall.yaml").write_text("topk: [10]\n")
    (tmp_path / "site" / "properties").mkdir()
    (tmp_path / "site" / "properties" / "overall.yaml").write_text("topk: [5]\n")
    monkeypatch.setattr(paths, "_HERE", str(package))
    assert paths.properties_dir() == str(package / "properties")  # a wheel's copy wins over a stray folder above it
    monkeypatch.setattr(paths, "_HERE", str(tmp_path / "empty" / "recbole_missrec"))
    with pytest.raises(FileNotFoundError, match="yaml files are missing.*pip install -e ."):
        paths.properties_dir()


def test_stages_are_found_by_name():
    assert stage_kind(MISSRec, "pretrain") == "pretrain" and stage_kind(MISSRec, "inductive_ft") == "finetune"
    assert get_trainer(None, "MISSRec", "pretrain") is PretrainTrainer
    assert get_trainer(None, "MISSRec", "transductive_ft") is PluginTrainer
    with pytest.raises(ValueError, match="train_stage='finetune' is not a stage of MISSRec.*inductive_ft"):
        stage_kind(MISSRec, "finetune")
    assert stage_kind(get_model("SASRec"), "finetune") is None  # RecBole's models keep RecBole's flow


def test_a_misspelled_model_lists_the_plugin_and_recbole_models():
    with pytest.raises(ValueError, match=r"(?s)unknown model 'SASRecc'\. Did you mean SASRec.*plugin models: HistorySASRec, MISSRec"):
        get_model("SASRecc")


def test_model_families_import_no_infrastructure():
    """A model reads config and dataset and computes: the trainer engine, data-parallel code and quick start
    are the core's, and no family imports another."""
    banned = ("recbole_missrec.trainer", "recbole_missrec.distributed", "recbole_missrec.quick_start",
              "recbole_missrec.config", "recbole_missrec.utils")
    model_root = os.path.join(ROOT, "recbole_missrec", "model")
    families = [name for name in os.listdir(model_root) if os.path.isdir(os.path.join(model_root, name))
                and not name.startswith("__")]
    for folder, _, files in os.walk(model_root):
        for name in files:
            if not name.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(folder, name)).read())
            imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            assert not any(module.startswith(banned) for module in imported), (name, imported)
            family = os.path.relpath(folder, model_root).split(os.sep)[0]
            if family == ".":  # model/__init__.py lists the families; layers.py is shared
                continue
            others = [f"recbole_missrec.model.{other}" for other in families if other != family]
            assert not any(module.startswith(tuple(others)) for module in imported), (name, imported)


class MeanPool(SequentialRecommender):
    """A user's own model: the mean of the history's item embeddings, scored by dot product."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.item_embedding = nn.Embedding(self.n_items, config["hidden_size"], padding_idx=0)

    def forward(self, item_seq, item_seq_len):
        return self.item_embedding(item_seq).sum(1) / item_seq_len.unsqueeze(1)

    def calculate_loss(self, interaction):
        seq = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return nn.functional.cross_entropy(seq @ self.item_embedding.weight.T, interaction[self.POS_ITEM_ID])

    def full_sort_predict(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]) @ self.item_embedding.weight.T


def test_a_users_own_model_class_runs(tmp_path):
    write_benchmark_dataset(tmp_path)
    result = run_recbole_missrec(MeanPool, "toy", config_dict=tiny_run_config(tmp_path, epochs=1, loss_type="CE", topk=[5], valid_metric="NDCG@5"))
    assert result["model"] == "MeanPool" and len(result["history"]) == 1
    assert load_state(result["checkpoint"])["config"]["loss_type"] == "CE"  # weights-only, with its config
    # model, time to the second and process id: runs started together in one folder keep their own files
    assert os.path.basename(result["checkpoint"]).endswith(f"-{os.getpid()}.pth")


def write_item_attributes(folder, n_items=30):
    with open(os.path.join(folder, "toy.item"), "w") as handle:
        handle.write("item_id:token\tcategories:token_seq\n")
        for item in range(n_items):
            handle.write(f"{item}\tcat{item % 3} group{item % 2}\n")


def test_s3rec_pretrains_then_finetunes_through_the_plugin(tmp_path):
    folder = write_benchmark_dataset(tmp_path)
    write_item_attributes(folder)
    base = tiny_run_config(tmp_path, topk=[5], valid_metric="NDCG@5", hidden_size=16, inner_size=16, item_attribute="categories",
                           load_col={"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id", "categories"]})
    pretrained = run_recbole_missrec("S3Rec", "toy", config_dict=dict(base, train_stage="pretrain", pretrain_epochs=2,
                                                                      save_step=1))
    assert os.path.basename(pretrained["checkpoint"]) == "S3Rec-toy-2.pth"
    state = load_state(pretrained["checkpoint"])  # weights-only: RecBole's own stage would pickle its Config
    finetuned = run_recbole_missrec("S3Rec", "toy", config_dict=dict(base, train_stage="finetune", epochs=1,
                                                                     pre_model_path=pretrained["checkpoint"]))
    assert "ndcg@5" in finetuned["test_result"]
    assert "aap_norm.weight" in state["state_dict"]


def test_hyper_tuning_runs_an_exhaustive_search_over_a_plugin_model(tmp_path):
    write_benchmark_dataset(tmp_path)
    fixed = tiny_run_config(tmp_path, epochs=1, topk=[5], valid_metric="NDCG@5")
    (tmp_path / "fixed.yaml").write_text(yaml.safe_dump(fixed))
    (tmp_path / "space.hyper").write_text("learning_rate choice [0.01,0.001]\n")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_hyper.py"), "--model=MISSRec", "--dataset=toy",
         f"--config_files={tmp_path / 'fixed.yaml'}", f"--params_file={tmp_path / 'space.hyper'}",
         f"--output_file={tmp_path / 'search.result'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    written = (tmp_path / "search.result").read_text()
    assert "learning_rate:0.01" in written and "learning_rate:0.001" in written
    assert "best params:" in done.stdout


def test_load_data_and_model_rebuilds_a_trained_plugin_model(tmp_path, monkeypatch):
    write_benchmark_dataset(tmp_path)
    result = run_recbole_missrec("MISSRec", "toy", config_dict=tiny_run_config(tmp_path, epochs=1, topk=[5], valid_metric="NDCG@5"))
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "toy", moved / "toy")
    monkeypatch.setattr(sys, "argv", ["export", "--hidden_size=8"])  # the loading process's arguments stay out
    config, model, dataset, _, _, test_data = load_data_and_model(result["checkpoint"], data_path=str(moved))
    assert config["data_path"].startswith(str(moved)) and isinstance(model, MISSRec)
    assert config["hidden_size"] == load_state(result["checkpoint"])["config"]["hidden_size"] != 8
    users = dataset.token2id(dataset.uid_field, ["0", "1", "2"])
    scores, items = full_sort_topk(users, model, test_data, k=5, device=config["device"])
    assert items.shape == (3, 5) and torch.isfinite(scores).all()
    trained = load_state(result["checkpoint"])["state_dict"]
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in trained.items())


def test_a_file_that_is_no_checkpoint_is_named(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=r"random\.pth is not a readable weights-only checkpoint"):
        load_state(str(path))


def resident_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc to read resident memory")
def test_freed_heap_memory_goes_back_to_the_system():
    blocks = [bytearray(b"x" * 65536) for _ in range(3000)]  # 190 MB of heap blocks below glibc's mmap threshold
    keep = bytearray(b"y" * 65536)  # above them: the freed ones are not at the heap's top, so not trimmed
    del blocks
    before = resident_mb()
    if not release_freed_memory():
        pytest.skip("this C library has no malloc_trim")
    assert before - resident_mb() > 100
    assert keep


STEP_LIKE_ALLOCATIONS = """
import json, resource, sys
import torch
from recbole_missrec.trainer import reuse_freed_memory
ran = reuse_freed_memory() if sys.argv[1] == "reuse" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a training step's activations: allocated, written, freed
    blocks = [torch.ones(10_000_000), torch.ones(3_000_000)]
    del blocks
print(json.dumps({"ran": ran, "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def step_like_page_faults(mode):
    env = {key: value for key, value in os.environ.items() if key not in ALLOCATOR_VARIABLES}
    done = subprocess.run([sys.executable, "-c", STEP_LIKE_ALLOCATIONS, mode], capture_output=True, text=True,
                          env=dict(env, OMP_NUM_THREADS="1"), check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and page-fault counts")
def test_freed_blocks_are_reused_instead_of_mapped_again(monkeypatch):
    """Blocks of tens of MB freed and allocated again, as in every training step: with glibc's defaults each
    one is mapped afresh (thousands of page faults per step), with ``reuse_freed_memory`` the heap keeps them;
    a process started with glibc's allocator variables keeps its own setting."""
    reused = step_like_page_faults("reuse")
    if not reused["ran"]:
        pytest.skip("this C library has no mallopt")
    defaults = step_like_page_faults("defaults")
    assert defaults["page_faults"] > 20 * 3000 and reused["page_faults"] < defaults["page_faults"] / 5
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert reuse_freed_memory() is False
