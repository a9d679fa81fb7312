"""The benchmark harness (benchmarks/run.py, benchmarks/scaling.py) end to end on synthetic data."""
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import (ROOT, reevaluated_test_result, tiny_pretrain_config, training_stops_at_epoch,
                      write_benchmark_dataset, write_pretrain_dataset)
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.trainer import CheckpointError

BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)

from attributes import category_path, category_tokens, prepare_working_copy  # noqa: E402
from compare import main as compare_main  # noqa: E402
from report import load_runs, markdown_table, mean_std, moved_folders, relocated  # noqa: E402
from run import extends  # noqa: E402
from single_run import best_epoch, summarize  # noqa: E402
from variants import VARIANTS, expand_variants, parse_checkpoints  # noqa: E402

TOY_LAYOUT = {
    "benchmark_filename": ["train", "valid", "test"], "alias_of_item_id": ["item_id_list"],
    "load_col": {"inter": ["user_id", "item_id_list", "item_id"]}, "plm_size": 16, "img_size": 12,
    "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 64, "eval_batch_size": 64, "use_gpu": False,
}
TOY_ITEMS = 60
CATEGORIES = ["Lab Supplies Pipettes", "Safety Gloves", ""]


def write_item_text(folder, name="toy", n_items=TOY_ITEMS):
    """The .text/.item2index pair of the real datasets: ASIN<TAB>'title. categories. brand. '."""
    with open(os.path.join(folder, f"{name}.text"), "w") as text, open(os.path.join(folder, f"{name}.item2index"), "w") as index:
        text.write("item_id:token\ttext:token_seq\n")
        for item in range(n_items):
            category = CATEGORIES[item % 3]
            path = f"Industrial & Scientific {category}" if category else ""
            text.write(f"ASIN{item}\tWidget No. {item}. {path}. Brand{item % 4}. \n")
            index.write(f"ASIN{item}\t{item}\n")


def run_harness(tmp_path, *extra, budget=("--quick",)):
    command = [sys.executable, os.path.join(BENCHMARKS, "run.py"), "--dataset", "toy", "--data_path", str(tmp_path),
               *budget, "--config-files", str(tmp_path / "toy.yaml"), "--out", str(tmp_path / "out"),
               "--work", str(tmp_path / "work"), "--threads", "1", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def toy(tmp_path):
    folder = write_benchmark_dataset(tmp_path, n_items=TOY_ITEMS)  # more items than the @50 cut-off
    write_item_text(folder, n_items=TOY_ITEMS)
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_LAYOUT))
    return tmp_path


def test_category_derivation_counts_fields_from_the_end():
    text = "Pipette No. 5, 10 ml. Industrial & Scientific Lab Supplies & Lab Pipettes. Acme. "
    assert category_path(text) == "Industrial & Scientific Lab Supplies & Lab Pipettes"
    assert category_tokens(category_path(text)) == ["lab", "supplies", "pipettes"]
    assert category_tokens(category_path("Fan, 24 in. . TPI. ")) == ["no_category"]


def test_working_copy_links_the_data_and_adds_the_item_file(toy, tmp_path):
    data_path = prepare_working_copy(str(tmp_path / "toy"), str(tmp_path / "work"))
    lines = (tmp_path / "work" / "toy" / "toy.item").read_text().splitlines()
    assert lines[0] == "item_id:token\tcategories:token_seq"
    assert lines[1:4] == ["0\tlab supplies pipettes", "1\tsafety gloves", "2\tno_category"]
    assert os.path.islink(os.path.join(data_path, "toy", "toy.train.inter"))
    assert not (tmp_path / "toy" / "toy.item").exists()  # the source folder is never written
    moved = tmp_path / "elsewhere" / "toy"  # the same dataset from another folder: the links follow it
    shutil.copytree(tmp_path / "toy", moved)
    prepare_working_copy(str(moved), str(tmp_path / "work"))
    assert os.readlink(os.path.join(data_path, "toy", "toy.train.inter")) == str(moved / "toy.train.inter")


def test_a_larger_budget_goes_on_from_where_a_finished_run_ended(toy):
    """More epochs continue the finished SASRec run from its last epoch (no epoch trained twice) and replace its
    record; a smaller budget keeps the record, and so does an extension that fails."""
    def sweep(epochs):
        return run_harness(toy, "--models", "SASRec", "--seeds", "1", budget=("--epochs", epochs, "--stopping-step", "5"))

    record_path = toy / "out" / "runs" / "SASRec__seed1.json"
    assert "epoch 0 training" in sweep("1")
    longer = sweep("3")
    assert "going on under this one" in longer and "epoch 0 training" not in longer and "epoch 2 training" in longer
    record = json.loads(record_path.read_text())
    assert [r["epoch"] for r in record["history"]] == [0, 1, 2] and record["budget"]["epochs"] == 3
    shorter = sweep("2")
    assert "kept; its budget was" in shorter and "running" not in shorter
    assert json.loads(record_path.read_text()) == record
    os.remove(record["checkpoint"])  # the progress file's best checkpoint: going on fails
    broken = sweep("4")
    assert "FAILED" in broken and "its finished record under budget" in broken
    assert json.loads(record_path.read_text()) == record


def running_commands(marker):
    """Command lines of this machine's processes that mention ``marker`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
            continue
        if marker in command:
            found.append(command)
    return found


def test_a_killed_sweep_takes_its_run_with_it(toy):
    """``kill`` on run.py ends the single_run.py it started: an orphan would train on unseen and a relaunch would
    put a second process on the same progress file."""
    command = [sys.executable, os.path.join(BENCHMARKS, "run.py"), "--dataset", "toy", "--data_path", str(toy),
               "--epochs", "500", "--stopping-step", "500", "--config-files", str(toy / "toy.yaml"), "--out",
               str(toy / "out"), "--work", str(toy / "work"), "--threads", "1", "--models", "SASRec", "--seeds", "1"]
    spec = str(toy / "work" / "specs" / "SASRec__seed1.json")
    with open(toy / "sweep.log", "w") as log:
        sweep = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=toy)
        try:
            progress = toy / "work" / "saved" / "SASRec__seed1" / "SASRec-toy-train-seed1-progress.pth"
            for _ in range(600):
                if progress.exists() or sweep.poll() is not None:
                    break
                time.sleep(0.2)
            assert progress.exists() and running_commands(spec), (toy / "sweep.log").read_text()[-2000:]
            sweep.terminate()
            assert sweep.wait(timeout=60) != 0
        finally:
            if sweep.poll() is None:
                sweep.kill()
    assert running_commands(spec) == []
    assert not (toy / "out" / "runs" / "SASRec__seed1.json").exists()


def test_only_a_grown_epoch_cap_or_patience_of_a_one_stage_run_extends_it():
    one_stage, two_stage = VARIANTS["SASRec"], VARIANTS["MSM4SR+in-domain-pretrain"]
    budget = {"epochs": 10, "stopping_step": 3, "s3rec_pretrain_epochs": 10, "overrides": {}}
    assert extends(budget, dict(budget, stopping_step=30), one_stage)
    assert extends(budget, dict(budget, epochs=20, stopping_step=5), one_stage)
    assert not extends(budget, budget, one_stage)
    assert not extends(budget, dict(budget, epochs=20, stopping_step=2), one_stage)
    assert not extends(budget, dict(budget, epochs=20, overrides={"learning_rate": 0.01}), one_stage)
    assert not extends(budget, dict(budget, stopping_step=30), two_stage)


def test_quick_sweep_writes_reports_and_resumes(toy):
    first = run_harness(toy, "--models", "MISSRec-inductive", "FDSA", "--seeds", "1", "2")
    assert first.count("running") == 4 and "epoch 0 training" in first

    results = json.loads((toy / "out" / "results.json").read_text())
    runs = {(run["variant"], run["seed"]): run for run in results["runs"]}
    assert set(runs) == {(v, s) for v in ("MISSRec-inductive", "FDSA") for s in (1, 2)}
    for run in runs.values():
        assert run["status"] == "ok", run.get("error")
        assert set(run["test"]) == {"hit@10", "ndcg@10", "hit@50", "ndcg@50"}
        with contextlib.chdir(toy / "work"):  # RecBole's log folders stay in work/, as the harness keeps them
            assert run["test"] == reevaluated_test_result(run["checkpoint"])  # the record is the checkpoint's
        assert run["epochs_run"] == 1 and run["best_epoch"] == 0
        assert run["train_seconds_per_epoch"] > 0 and run["eval_seconds"] > 0
        assert run["peak_rss_mb"] > 50 and run["trainable_params"] > 0
        assert run["config"]["hidden_size"] == 300
    losses = [runs[("MISSRec-inductive", seed)]["history"][0]["train_loss"] for seed in (1, 2)]
    assert losses[0] != losses[1]  # the seed reaches the run

    table = (toy / "out" / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| MISSRec-inductive") or line.startswith("| FDSA")]
    assert len(rows) == 2 and all(" ± " in row and "| 1, 2 |" in row for row in rows)
    assert (toy / "out" / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (toy / "work" / "log").is_dir() and not (toy / "log").exists()  # RecBole's side effects stay in work/

    second = run_harness(toy, "--models", "MISSRec-inductive", "FDSA", "--seeds", "1", "2")
    assert "running" not in second and second.count("finished earlier, skipped") == 4

    import coldstart  # protocol (a) on the sweep's checkpoints

    coldstart.main(["buckets", "--results", str(toy / "out")])
    buckets = json.loads((toy / "out" / "coldstart_buckets.json").read_text())
    for variant, results in buckets["per_run"].items():
        for result in results:  # the reloaded checkpoint ranks the test rows as the sweep did
            assert result["all"]["ndcg@10"] == pytest.approx(result["recbole_test_ndcg@10"], abs=1e-4), variant
            assert sum(result[name]["rows"] for name in ("0", "1-4", "5-9", "10-19", ">=20")) == result["all"]["rows"]
    assert (toy / "out" / "coldstart_buckets.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(result["seed"] for result in buckets["per_run"]["FDSA"]) == [1, 2]

    fdsa_checkpoint = Path(runs[("FDSA", 2)]["checkpoint"])  # a lost work folder: the earlier figures stay
    fdsa_checkpoint.rename(fdsa_checkpoint.with_suffix(".moved"))
    coldstart.main(["buckets", "--results", str(toy / "out")])
    assert json.loads((toy / "out" / "coldstart_buckets.json").read_text()) == buckets
    fdsa_figures = [result["recbole_test_ndcg@10"] for result in buckets["per_run"]["FDSA"]]
    assert len(set(fdsa_figures)) == 2  # the seeds' sweep figures differ, so they can name the run
    older = {variant: [{key: value for key, value in result.items() if key != "seed"} for result in results]
             for variant, results in buckets["per_run"].items()}  # a file written before results carried seeds
    (toy / "out" / "coldstart_buckets.json").write_text(json.dumps(dict(buckets, per_run=older)))
    coldstart.main(["buckets", "--results", str(toy / "out")])
    assert json.loads((toy / "out" / "coldstart_buckets.json").read_text()) == buckets
    (toy / "out" / "coldstart_buckets.json").write_text('{"per_run": ')  # a write cut short
    with pytest.raises(SystemExit, match="coldstart_buckets.json is not .*move it aside"):
        coldstart.main(["buckets", "--results", str(toy / "out")])
    assert (toy / "out" / "coldstart_buckets.json").read_text() == '{"per_run": '  # left for the user to inspect
    (toy / "out" / "coldstart_buckets.json").unlink()
    with pytest.raises(SystemExit, match="FDSA seed 2.*is missing"):
        coldstart.main(["buckets", "--results", str(toy / "out")])
    coldstart.main(["buckets", "--results", str(toy / "out"), "--seeds", "1"])  # the lost run left out
    assert sorted(result["seed"] for result in json.loads(
        (toy / "out" / "coldstart_buckets.json").read_text())["per_run"]["FDSA"]) == [1]
    fdsa_checkpoint.with_suffix(".moved").rename(fdsa_checkpoint)
    tested = (toy / "out" / "coldstart_buckets.json").read_text()
    coldstart.main(["buckets", "--results", str(toy / "out"), "--split", "valid"])  # the best epoch's own rows
    valid = json.loads((toy / "out" / "coldstart_buckets_valid.json").read_text())
    for variant, results in valid["per_run"].items():
        for result in results:
            assert result["all"]["ndcg@10"] == pytest.approx(result["recbole_valid_score"], abs=1e-4), variant
    assert (toy / "out" / "coldstart_buckets.json").read_text() == tested
    assert "| valid rows |" in (toy / "out" / "coldstart_buckets_valid.md").read_text()
    (toy / "work").rename(toy / "renamed")  # a work folder renamed whole: found when named, never guessed
    (toy / "out" / "coldstart_buckets.json").rename(toy / "kept.json")
    with pytest.raises(SystemExit, match="is missing.*--moved OLD=NEW"):
        coldstart.main(["buckets", "--results", str(toy / "out")])
    coldstart.main(["buckets", "--results", str(toy / "out"), "--moved", f"{toy / 'work'}={toy / 'renamed'}"])
    assert json.loads((toy / "out" / "coldstart_buckets.json").read_text()) == buckets

    from reevaluate import main as reevaluate_main  # a record that lost metrics gets them back from its checkpoint

    record_path = toy / "out" / "runs" / "MISSRec-inductive__seed1.json"
    original = json.loads(record_path.read_text())
    trimmed = dict(original, test={"ndcg@10": original["test"]["ndcg@10"]})
    record_path.write_text(json.dumps(trimmed))
    with pytest.raises(SystemExit, match="is missing.*--moved OLD=NEW"):
        reevaluate_main([str(toy / "out"), "--work", str(toy / "renamed")])
    assert json.loads(record_path.read_text()) == trimmed
    reevaluate_main([str(toy / "out"), "--work", str(toy / "renamed"), "--moved", f"{toy / 'work'}={toy / 'renamed'}"])
    assert json.loads(record_path.read_text()) == original  # the paths its run wrote are kept
    assert not (toy / "work").exists()  # nothing made at the old place
    (toy / "renamed").rename(toy / "work")
    rebuilt = json.loads((toy / "out" / "results.json").read_text())["runs"]
    assert [run["test"] for run in rebuilt if run["variant"] == "MISSRec-inductive" and run["seed"] == 1] == [original["test"]]
    forged = json.dumps(dict(original, test=dict(original["test"], **{"ndcg@10": 0.5})))
    record_path.write_text(forged)
    with pytest.raises(SystemExit, match="does not reproduce"):
        reevaluate_main([str(toy / "out"), "--work", str(toy / "work")])
    assert record_path.read_text() == forged


def test_quick_sweep_runs_the_msm4sr_variants(toy):
    """From scratch (IDs, features only) and the in-domain two-stage schedule: pre-train, then fine-tune from
    that checkpoint through ``pretrained``."""
    variants = ("MSM4SR", "MSM4SR-inductive", "MSM4SR+in-domain-pretrain")
    run_harness(toy, "--models", *variants, "--seeds", "1")
    runs = {run["variant"]: run for run in json.loads((toy / "out" / "results.json").read_text())["runs"]}
    assert {name: run["status"] for name, run in runs.items()} == dict.fromkeys(variants, "ok")
    two_stage = runs["MSM4SR+in-domain-pretrain"]
    assert two_stage["pretrain_epochs"] == 1 and two_stage["transfer"]["new"] == ["item_embedding.weight"]
    assert "trm_encoder.layer.0.multi_head_attention.query.weight" in two_stage["transfer"]["loaded"]

    (toy / "out" / "runs" / "MSM4SR+in-domain-pretrain__seed1.json").unlink()  # as if killed before its record
    again = run_harness(toy, "--models", "MSM4SR+in-domain-pretrain", "--seeds", "1")
    log = (toy / "work" / "logs" / "MSM4SR+in-domain-pretrain__seed1.log").read_text()
    assert "epoch 0 training" not in again and log.count("finished, nothing to train") == 2  # both stages
    rerun = json.loads((toy / "out" / "runs" / "MSM4SR+in-domain-pretrain__seed1.json").read_text())
    assert rerun["test"] == two_stage["test"] and rerun["epoch_seconds"] == two_stage["epoch_seconds"]


def test_each_family_fine_tunes_from_its_own_checkpoint():
    checkpoints = parse_checkpoints(["UniSRec=u.pth"])
    assert checkpoints == {"UniSRec": os.path.abspath("u.pth")}
    chosen = expand_variants(["MISSRec-inductive", "UniSRec-transductive", "SASRec"], checkpoints)
    assert chosen == ["MISSRec-inductive", "UniSRec-transductive", "SASRec", "UniSRec-transductive+pretrained"]
    shared = parse_checkpoints(["all.pth", "UniSRec=u.pth"])  # a bare path serves the families without their own
    assert len(expand_variants(["MISSRec-inductive", "UniSRec-inductive"], shared)) == 4
    with pytest.raises(SystemExit, match="MISSRec=PATH"):
        expand_variants(["MISSRec-inductive+pretrained"], checkpoints)


def test_quick_sweep_runs_unisrec_from_scratch_and_from_its_pretraining(toy):
    """A UniSRec checkpoint pre-trained elsewhere (text only, the benchmark's width 300) fine-tuned with a
    frozen backbone, beside the same variant from scratch."""
    write_pretrain_dataset(toy / "pretraining")
    config = tiny_pretrain_config(toy / "pretraining", epochs=1, hidden_size=300, inner_size=256)
    checkpoint = run_recbole_missrec("UniSRec", "pt", config_dict=config)["checkpoint"]
    run_harness(toy, "--models", "UniSRec-transductive", "--seeds", "1", "--pretrained", f"UniSRec={checkpoint}")
    runs = {run["variant"]: run for run in json.loads((toy / "out" / "results.json").read_text())["runs"]}
    assert {name: run["status"] for name, run in runs.items()} == dict.fromkeys(
        ["UniSRec-transductive", "UniSRec-transductive+pretrained"], "ok")
    transferred = runs["UniSRec-transductive+pretrained"]
    assert transferred["pretrained"] == checkpoint and transferred["transfer"]["new"] == ["item_embedding.weight"]
    assert transferred["trainable_params"] < transferred["total_params"] == runs["UniSRec-transductive"]["total_params"]


def test_reinitialised_checkpoint_redraws_every_weight_as_a_run_would(tmp_path):
    """The transfer control: same entries and shapes as the pre-trained checkpoint, none of its values, the
    same draw for the same seed, and a fine-tuning run accepts it as it accepts the real one; ``--only`` re-draws
    just the named part and keeps the rest as trained."""
    from reinit_checkpoint import main as reinit_main

    write_pretrain_dataset(tmp_path)
    checkpoint = run_recbole_missrec("MISSRec", "pt", config_dict=tiny_pretrain_config(tmp_path, epochs=1))["checkpoint"]
    outputs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        reinit_main([checkpoint, "--seed", str(seed), "--out", str(tmp_path / f"{name}.pth")])
        outputs[name] = torch.load(tmp_path / f"{name}.pth", weights_only=True)["state_dict"]
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert {key: value.shape for key, value in outputs["a"].items()} == {key: value.shape for key, value in trained.items()}
    weight = "transformer.encoder.layers.0.linear1.weight"
    assert torch.equal(outputs["a"][weight], outputs["b"][weight]) and not torch.equal(outputs["a"][weight], outputs["c"][weight])
    assert not torch.equal(outputs["a"][weight], trained[weight])
    with pytest.raises(SystemExit, match="the checkpoint itself"):
        reinit_main([checkpoint, "--out", checkpoint])
    reinit_main([checkpoint, "--seed", "1", "--only", "adapters.", "--out", str(tmp_path / "adapter.pth")])
    part = torch.load(tmp_path / "adapter.pth", weights_only=True)
    adapter = [key for key in trained if key.startswith("adapters.")]
    assert adapter and part["reinitialised"] == sorted(adapter)
    assert all(torch.equal(part["state_dict"][key], outputs["a"][key]) for key in adapter)  # the seed-1 draw
    assert torch.equal(part["state_dict"][weight], trained[weight])  # the backbone as pre-trained
    with pytest.raises(CheckpointError, match="no state_dict entry starts with adaptor"):
        reinit_main([checkpoint, "--only", "adaptor", "--out", str(tmp_path / "none.pth")])
    config = tiny_pretrain_config(tmp_path, train_stage="inductive_ft", modal_type="text", epochs=1, topk=[10])
    result = run_recbole_missrec("MISSRec", "pt", config_dict=config, pretrained=str(tmp_path / "a.pth"))
    assert result["transfer"]["loaded"] and result["trainable_params"] < result["total_params"]


def test_similarity_baseline_ranks_by_the_last_item_and_averages_ties(tmp_path):
    """No model: cosine with the last history item (or the history's mean); a target tied with another item
    gets the expectation of the two orders."""
    from similarity_baseline import main as similarity_main

    from recbole_missrec.data.feature_file import write_feature_file

    folder = tmp_path / "tiny"
    folder.mkdir()
    # items 1 and 4 have the same features (same text)
    write_feature_file(folder / "tiny.feat1CLS", np.array([[1, 0], [1, .1], [0, 1], [.1, 1], [1, .1]]))
    (folder / "tiny.test.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n"
                                            "0\t2 0\t1\n1\t0 2\t0\n")
    similarity_main(["--dataset", "tiny", "--data_path", str(tmp_path), "--dim", "2", "--out", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    ndcg = [1 / math.log2(rank + 2) for rank in range(5)]  # of 0-based ranks
    # last item. Row 0 (last item 0, target 1): item 0 above, item 4 tied -> rank 1 or 2.
    # Row 1 (last item 2, target 0): items 2, 3, 1 and 4 above -> rank 4.
    assert results["last item"]["ndcg@10"] == round(((ndcg[1] + ndcg[2]) / 2 + ndcg[4]) / 2, 4)
    # mean of the history, [.5, .5] for both rows. Row 0: target 1 tied with 3 and 4 -> rank 0, 1 or 2.
    # Row 1: items 1, 3, 4 above target 0, item 2 tied -> rank 3 or 4.
    assert results["mean of the history"]["ndcg@10"] == round((sum(ndcg[:3]) / 3 + (ndcg[3] + ndcg[4]) / 2) / 2, 4)
    with pytest.raises(SystemExit, match="not found"):
        similarity_main(["--dataset", "none", "--data_path", str(tmp_path), "--out", str(tmp_path / "x")])


class ScoreByHistoryItem:
    """A stand-in sequential model: every item scored by a fixed table's row of one history item (the last,
    or the first), the way a network that passes that item's features through would rank."""
    ITEM_SEQ, ITEM_SEQ_LEN = "item_id_list", "item_length"

    def __init__(self, table, use_last):
        self.table, self.use_last = table, use_last

    def full_sort_predict(self, interaction):
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        key = seq.gather(1, (length - 1).unsqueeze(1)).squeeze(1) if self.use_last else seq[:, 0]
        return self.table[key].flatten()


def probe_batches():
    """Full-sort batches of three rows over 16 items: histories [2, 3], [5], [1, 6, 4]; targets 7, 2, 3."""
    from recbole.data.interaction import Interaction

    seq = torch.tensor([[2, 3, 0], [5, 0, 0], [1, 6, 4]])
    batch = Interaction({"item_id_list": seq, "item_length": torch.tensor([2, 1, 3])})
    return [(batch, None, torch.arange(3), torch.tensor([7, 2, 3]))]


def test_history_probe_tells_a_last_item_model_from_one_that_reads_the_history(tmp_path, monkeypatch):
    """A model that ranks by the last item: echo@1 and overlap@10 are 1 and cutting the history changes
    nothing; one that ranks by the first item never puts the last item first where the two differ, and its
    last-item-only NDCG is that of the last-item model. Every figure agrees with a ranking done by hand."""
    import coldstart
    import history_probe

    table = torch.arange(16.0) / 100 + 10 * torch.eye(16)  # [key, item]: the key first, then by item id
    last = history_probe.probe_rows(ScoreByHistoryItem(table, True), probe_batches(), "cpu")
    first = history_probe.probe_rows(ScoreByHistoryItem(table, False), probe_batches(), "cpu")
    assert last["echo@1"].tolist() == [1, 1, 1] and last["overlap@10"].tolist() == [1, 1, 1]
    assert torch.equal(last["ndcg@10"], last["ndcg@10, last item only"])
    assert first["echo@1"].tolist() == [0, 1, 0] and torch.equal(first["ndcg@10, last item only"], last["ndcg@10"])
    # row 0: first item 2 puts 2 then 15..7 on top, last item 3 at rank 13 (below 2 and 15..4)
    assert first["echo@10"].tolist() == [0, 1, 0] and first["overlap@10"].tolist() == pytest.approx([0.9, 1, 0.9])
    scores = table[torch.tensor([2, 5, 1])].clone()  # the first items' rows
    scores[:, 0] = float("-inf")
    assert torch.equal(first["ndcg@10"], coldstart.row_metrics_at_k(
        *coldstart.ranks_among_scores(scores, torch.tensor([7, 2, 3])))[1])
    assert first["ndcg@10"][2] == 0 and first["ndcg@10"][0] == pytest.approx(1 / math.log2(10 + 2 - 1))

    write_runs(tmp_path / "a", "M", [0.05, 0.06])
    for seed in (1, 2):
        path = tmp_path / "a" / "runs" / f"M__seed{seed}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "checkpoint": str(tmp_path / f"{seed}.pth"),
                                    "config": {"data_path": str(tmp_path)}}))
    with pytest.raises(SystemExit, match="every checkpoint of .* is gone"):
        history_probe.main(["--rows", f"last={tmp_path / 'a'}", "--out", str(tmp_path / "out")])
    (tmp_path / "2.pth").touch()
    models = {"1": ScoreByHistoryItem(table, True), "2": ScoreByHistoryItem(table, False)}
    monkeypatch.setattr(history_probe, "reload_run", lambda record, data_path: (
        {"device": "cpu"}, models[record["checkpoint"][-5]], None, None, probe_batches()))
    history_probe.main(["--rows", f"first={tmp_path / 'a'}", "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "history_probe.json").read_text())["rows"][0]["seeds"] == [2]
    (tmp_path / "1.pth").touch()
    history_probe.main(["--rows", f"mixed={tmp_path / 'a'}", "--out", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "history_probe.json").read_text())["rows"][0]
    assert written["seeds"] == [1, 2] and [run["echo@1"] for run in written["runs"]] == [1.0, round(1 / 3, 4)]
    assert f"| mixed | 1, 2 | {mean_std([run['ndcg@10'] for run in written['runs']])} |" in \
        (tmp_path / "out" / "history_probe.md").read_text()


def test_failed_run_is_recorded_and_the_sweep_goes_on(toy):
    run_harness(toy, "--models", "SASRec", "S3Rec", "--seeds", "1", "--set", "n_heads=7")  # 300 % 7 != 0
    runs = json.loads((toy / "out" / "results.json").read_text())["runs"]
    assert {run["variant"]: run["status"] for run in runs} == {"SASRec": "failed", "S3Rec": "failed"}
    assert all("hidden size" in run["error"] for run in runs)
    assert "Failed: SASRec seed 1" in (toy / "out" / "table.md").read_text()


def test_a_moved_work_folder_is_found_under_its_new_name_only():
    moves = moved_folders(["/w/hb1=/w/hb1-p10"])
    record = {"checkpoint": "/w/hb1/saved/M__seed1/M.pth", "config": {"data_path": "/w/hb1/data", "seed": 1}}
    assert relocated(record, moves) == {"checkpoint": "/w/hb1-p10/saved/M__seed1/M.pth",
                                        "config": {"data_path": "/w/hb1-p10/data", "seed": 1}}
    assert record["checkpoint"] == "/w/hb1/saved/M__seed1/M.pth"  # the record read stays as it was
    beside = {"checkpoint": "/w/hb1-p10/saved/M__seed1/M.pth", "config": {"data_path": "/data"}}
    assert relocated(beside, moves) == beside  # a sibling sharing the prefix is another folder
    with pytest.raises(SystemExit, match="OLD_FOLDER=NEW_FOLDER"):
        moved_folders(["/w/hb1"])


def test_mean_std_over_seeds():
    assert mean_std([0.1, 0.3]) == "0.2000 ± 0.1414"
    assert mean_std([0.25]) == "0.2500"


def write_runs(folder, variant, ndcgs, at_11=False):
    """run.py-style records of one variant, one per seed, with the given test NDCG@10."""
    os.makedirs(folder / "runs", exist_ok=True)
    for seed, ndcg in enumerate(ndcgs, start=1):
        test = {"hit@10": 2 * ndcg, "ndcg@10": ndcg, "hit@50": 4 * ndcg, "ndcg@50": 1.5 * ndcg}
        if at_11:
            test.update({"hit@11": 2.1 * ndcg, "ndcg@11": 1.05 * ndcg, "ndcg@51": 1.51 * ndcg})
        record = {"variant": variant, "seed": seed, "status": "ok", "test": test, "budget": {"epochs": 4},
                  "best_epoch": 3, "epochs_run": 4, "cpu_seconds": 10.0, "peak_rss_mb": 100.0, "trainable_params": 7}
        (folder / "runs" / f"{variant}__seed{seed}.json").write_text(json.dumps(record))


def test_compare_marks_differences_beyond_the_seed_std(tmp_path):
    write_runs(tmp_path / "a", "M", [0.050, 0.052, 0.054], at_11=True)  # std 0.002
    write_runs(tmp_path / "b", "M+pretrained", [0.057, 0.058, 0.059], at_11=True)  # +0.006: beyond
    write_runs(tmp_path / "c", "M", [0.049, 0.053, 0.057])  # +0.001, std 0.004: within; no @11
    rows = compare_main(["--rows", f"base={tmp_path / 'a'}", f"pre={tmp_path / 'b'}", f"noisy={tmp_path / 'c'}",
                         "--out", str(tmp_path / "out")])
    assert [row["variant"] for row in rows] == ["M", "M+pretrained", "M"]
    table = (tmp_path / "out" / "comparison.md").read_text()
    lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "+0.0060 *" in lines["| pre"] and "+0.0010 |" in lines["| noisy"]
    assert "NDCG@11" not in table  # only where every row evaluated @11
    rows = compare_main(["--rows", f"base={tmp_path / 'a'}", f"pre={tmp_path / 'b'}", "--out", str(tmp_path / "out")])
    assert "| NDCG@11 |" in (tmp_path / "out" / "comparison.md").read_text()


def test_a_run_record_keeps_every_test_metric_the_run_evaluated():
    result = {"history": [{"epoch": 0, "train_seconds": 1.0, "valid_seconds": 0.5, "valid_score": 0.1}],
              "test_result": {"hit@10": 0.2, "hit@11": 0.21, "ndcg@10": 0.1, "ndcg@11": 0.105},
              "best_valid_score": 0.1, "valid_score_bigger": True, "peak_rss_mb": 1.0, "trainable_params": 1,
              "checkpoint": "x.pth", "total_params": 1}
    assert summarize(result)["test"] == result["test_result"]  # @11 reaches compare.py's @11 columns
    assert summarize(result)["epoch_seconds"] == 1.5


def test_compare_refresh_rebuilds_the_listed_rows_with_new_seeds(tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match="build the table once with --rows"):
        compare_main(["--refresh", "--out", out])
    write_runs(tmp_path / "a", "M", [0.05])
    write_runs(tmp_path / "b", "M", [0.06])
    write_runs(tmp_path / "b", "N", [0.07])
    compare_main(["--rows", f"base={tmp_path / 'a'}", f"other={tmp_path / 'b'}:N", "--out", out])
    write_runs(tmp_path / "a", "M", [0.05, 0.07])  # a second seed lands in the row's folder
    rows = compare_main(["--refresh", "--out", out])
    listed = [(row["label"], row["variant"], row["seeds"]) for row in rows]
    assert listed == [("base", "M", [1, 2]), ("other", "N", [1])]
    assert "| base | 1, 2 | " in (tmp_path / "out" / "comparison.md").read_text()
    (tmp_path / "out" / "comparison.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a comparison.json"):
        compare_main(["--refresh", "--out", out])


def test_compare_add_puts_rows_after_a_label_and_replaces_a_listed_one(tmp_path):
    out = str(tmp_path / "out")
    for name, ndcg in (("a", 0.05), ("b", 0.06), ("c", 0.07), ("d", 0.08)):
        write_runs(tmp_path / name, "M", [ndcg])
    compare_main(["--rows", f"first={tmp_path / 'a'}", f"last={tmp_path / 'b'}", "--out", out])
    rows = compare_main(["--add", f"new={tmp_path / 'c'}", f"newer={tmp_path / 'd'}", "--after", "first", "--out", out])
    assert [row["label"] for row in rows] == ["first", "new", "newer", "last"]
    rows = compare_main(["--add", f"new={tmp_path / 'b'}", f"end={tmp_path / 'a'}", "--out", out])
    assert [(row["label"], row["test"]["ndcg@10"]) for row in rows] == [
        ("first", [0.05]), ("new", [0.06]), ("newer", [0.08]), ("last", [0.06]), ("end", [0.05])]
    assert "| new | 1 | 0.1200 |" in (tmp_path / "out" / "comparison.md").read_text()  # HIT@10 of folder b
    with pytest.raises(SystemExit, match="'nowhere' is not a row of the table"):
        compare_main(["--add", f"x={tmp_path / 'a'}", "--after", "nowhere", "--out", out])
    with pytest.raises(SystemExit):
        compare_main(["--rows", f"x={tmp_path / 'a'}", "--after", "first", "--out", out])
    assert [row["label"] for row in json.loads((tmp_path / "out" / "comparison.json").read_text())["rows"]] == [
        "first", "new", "newer", "last", "end"]  # the refused calls left the table as it was


def test_tables_show_every_sitting_of_a_resumed_run(tmp_path):
    write_runs(tmp_path / "a", "M", [0.05])
    record_path = tmp_path / "a" / "runs" / "M__seed1.json"
    history = [{"epoch": epoch, "train_seconds": 100.0, "valid_seconds": 5.0} for epoch in range(3)]
    record_path.write_text(json.dumps(dict(json.loads(record_path.read_text()), history=history)))  # no epoch_seconds
    write_runs(tmp_path / "b", "M", [0.05])
    rows = compare_main(["--rows", f"base={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--out", str(tmp_path / "out")])
    assert rows[0]["figures"]["epoch_seconds"] == [315.0] and rows[0]["figures"]["cpu_seconds"] == [10.0]
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "| 315 |" in table and " (a)" not in table  # no run marked resumed

    history[1]["resumed"] = True  # the trainer's mark: a later process trained on from epoch 1
    machine = {"cpu": "AMD EPYC", "cores": 2, "memory_gb": 23.5, "gpu": None, "torch": "2.13.0+cpu"}
    record_path.write_text(json.dumps(dict(json.loads(record_path.read_text()), history=history, machine=machine)))
    compare_main(["--refresh", "--out", str(tmp_path / "out")])
    lines = (tmp_path / "out" / "comparison.md").read_text().splitlines()
    assert "| 10 (a) | 315 | 100 (a) |" in lines[2] and "| 10 | – | 100 |" in lines[3]  # only the resumed row's
    assert any(line.startswith("- (a): a run resumed") for line in lines)
    table = markdown_table(load_runs(str(tmp_path / "a")), [])  # run.py's table.md of the folder
    assert "| 10 (a) | 315 | 100 (a) |" in table and "- (a): a run resumed" in table


def test_report_names_a_machine_once_across_sittings_on_different_kernels():
    from report import machines

    machine = {"cpu": "AMD EPYC", "cores": 2, "memory_gb": 23.5, "gpu": None, "torch": "2.13.0+cpu", "platform": "v1"}
    runs = [{"status": "ok", "torch_threads": threads, "machine": dict(machine, platform=platform)}
            for threads, platform in ((1, "v1"), (2, "v2"), (2, "v3"))]
    assert machines(runs) == ["AMD EPYC, 2 cores, 23.5 GB, CPU only, 1, 2 thread(s) per run; torch 2.13.0+cpu"]
    runs.append({"status": "ok", "torch_threads": 1, "machine": dict(machine, cores=16, gpu="H200")})
    assert len(machines(runs)) == 2


def test_compare_asks_for_the_variant_of_a_mixed_folder(tmp_path):
    write_runs(tmp_path / "a", "M", [0.05])
    write_runs(tmp_path / "a", "N", [0.06])
    with pytest.raises(SystemExit, match="name one as"):
        compare_main(["--rows", f"x={tmp_path / 'a'}", "--out", str(tmp_path / "out")])
    rows = compare_main(["--rows", f"x={tmp_path / 'a'}:N", "--out", str(tmp_path / "out")])
    assert rows[0]["test"]["ndcg@10"] == [0.06]


def test_serving_quick_writes_its_figures(tmp_path):
    out = tmp_path / "serving"
    command = [sys.executable, os.path.join(BENCHMARKS, "serving.py"), "--quick", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "serving.json").read_text())
    (row,) = figures["rows"]
    assert row["items"] == 3000 and row["add_items_s"] > 0 and row["exact_cpu_ms_per_history"] > 0
    assert [point["index"] for point in row["two_stage"]] == ["ivf", "hnsw"]
    for point in row["two_stage"]:
        assert point["sizes"] == {"fused": 3000}  # 200 model items + 2,800 added
        assert point["recall_at_10"] >= 0.9 and 0 < point["p50_ms"] <= point["p99_ms"]
        assert point["build_s"] > 0 and point["index_mb"] > 0
    assert "| items | index | k' / effort | recall@10 |" in (out / "serving.md").read_text()


def test_scaling_quick_writes_its_figures(tmp_path):
    out = tmp_path / "scaling"
    command = [sys.executable, os.path.join(BENCHMARKS, "scaling.py"), "--quick", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "scaling.json").read_text())
    assert [row["tokens"] for row in figures["kmeans"]] == figures["settings"]["tokens"]
    assert all(row["seconds"] > 0 and row["cpu_seconds"] >= 0 and row["peak_rss_mb"] > 0 for row in figures["kmeans"])
    assert all(row["ms_per_user"] > 0 and row["cpu_ms_per_user"] > 0 for row in figures["scoring"])
    assert {row["mode"] for row in figures["scoring"]} == {"inductive_ft", "transductive_ft"}
    assert "| tokens |" in (out / "scaling.md").read_text()


def test_scaling_parts_keep_the_other_parts_rows(tmp_path):
    out = tmp_path / "scaling"
    for parts in (["kmeans", "discovery"], ["quality"]):
        command = [sys.executable, os.path.join(BENCHMARKS, "scaling.py"), "--quick", "--out", str(out), "--parts", *parts]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "scaling.json").read_text())
    assert {"kmeans", "discovery", "quality"} <= set(figures) and "scoring" not in figures
    assert [(row["ratio"], row["method"]) for row in figures["discovery"]] == [(0.02, "exact"), (0.5, "exact")]
    assert all(row["k"] == math.ceil(row["ratio"] * row["tokens"]) for row in figures["discovery"])
    gaussian = [row for row in figures["quality"] if row["kind"] == "gaussian"]
    assert len(gaussian) == 2 and all(0.9 < row["ratio_to_exact"] < 1.1 for row in gaussian)
    assert "### kmeans" in (out / "scaling.md").read_text() and "### quality" in (out / "scaling.md").read_text()


def test_step_profile_times_every_part(toy):
    out = toy / "profile"
    command = [sys.executable, os.path.join(BENCHMARKS, "step_profile.py"), "--dataset", "toy", "--data_path", str(toy),
               "--config-files", str(toy / "toy.yaml"), "--lengths", "2", "4", "--batch", "16", "--repeats", "1",
               "--set", "hidden_size=16", "--set", "inner_size=16", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=toy)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "step_profile.json").read_text())
    assert list(figures["lengths"]) == ["2", "4"]
    for parts in figures["lengths"].values():
        assert set(parts) == {"candidate tokens (no grad)", "sequence encoding (no grad)", "forward with loss",
                              "whole step (forward, backward, Adam)"}
        assert all(math.isfinite(value) and value >= 0 for value in parts.values())
    shares = [row["share"] for row in figures["operators"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert "| 4 |" in (out / "step_profile.md").read_text()


def test_the_harness_runs_without_matplotlib(tmp_path, monkeypatch):
    """--help and --no-plot need no matplotlib; a plot without it names the extra to install."""
    blocker = tmp_path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "blocked")}
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "run.py"), "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0 and "--no-plot" in done.stdout, done.stderr[-2000:]
    import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit, match=r"recbole-missrec\[bench\]"):
        report.pyplot()


def test_training_counts_count_each_interaction_once():
    import types

    import torch
    from recbole.data.interaction import Interaction

    import coldstart

    rows = Interaction({  # one user: items 3, 5, 3, 7 in training -> prefix rows
        "item_id_list": torch.tensor([[3, 0, 0], [3, 5, 0], [3, 5, 3]]), "item_length": torch.tensor([1, 2, 3]),
        "item_id": torch.tensor([5, 3, 7]),
    })
    config = {"ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list", "ITEM_LIST_LENGTH_FIELD": "item_length"}
    counts = coldstart.training_counts(types.SimpleNamespace(config=config, inter_feat=rows), 9)
    assert counts.tolist() == [0, 0, 0, 2, 0, 1, 0, 1, 0]
    ranks = torch.tensor([0, 3, 12, 9])
    split = coldstart.bucket_metrics(ranks, torch.tensor([0, 2, 2, 25]))
    assert split["0"]["hit@10"] == 1.0 and split["1-4"]["rows"] == 2 and split["1-4"]["hit@10"] == 0.5
    assert split[">=20"]["ndcg@10"] == pytest.approx(1 / math.log2(11)) and split["5-9"]["rows"] == 0
    # ties: a target tied with 3 others at rank 8 is in the top 10 in 2 of the 4 orders
    tied = coldstart.metrics_at_k(torch.tensor([8]), torch.tensor([3]))
    assert tied["hit@10"] == pytest.approx(0.5)
    assert tied["ndcg@10"] == pytest.approx((1 / math.log2(10) + 1 / math.log2(11)) / 4)


def test_paired_comparison_scores_the_same_rows_and_refuses_different_ones():
    """A gap of one seed each is judged on the users both runs share: per-row differences, their standard
    error and p-value; runs scored on different rows cannot be paired."""
    import coldstart
    import paired

    first = torch.tensor([1.0, 0.0, 0.5, 0.0])
    second = torch.tensor([1.0, 1.0, 0.5, 0.25])
    result = paired.paired_difference(first, second)  # differences 0, 1, 0, 0.25
    error = torch.tensor([0.0, 1.0, 0.0, 0.25], dtype=torch.float64).std().item() / 2
    assert result["mean"] == pytest.approx(0.3125) and result["stderr"] == pytest.approx(error)
    assert result["low"] == pytest.approx(0.3125 - 1.96 * error) and (result["better"], result["worse"]) == (2, 0)
    assert result["p"] == pytest.approx(math.erfc(0.3125 / error / math.sqrt(2)))
    assert paired.paired_difference(first, first)["p"] == 1.0
    ranks_a, ranks_b = torch.tensor([0, 12, 3]), torch.tensor([1, 0, 3])
    targets = torch.tensor([4, 5, 6])
    rows = [(targets, coldstart.row_metrics(ranks, None, (10, 50))) for ranks in (ranks_a, ranks_b)]
    result = paired.compare(*rows)
    assert result["hit@10"]["mean"] == pytest.approx(1 / 3) and result["hit@10"]["first"] == pytest.approx(2 / 3)
    assert result["ndcg@10"]["mean"] == pytest.approx((1 / math.log2(3) - 1 + 1) / 3)
    # at 50 the rank-12 target of the first run counts too: both runs hit every row
    assert result["hit@50"]["mean"] == 0 and result["hit@50"]["first"] == 1
    assert result["ndcg@50"]["first"] == pytest.approx((1 + 1 / math.log2(14) + 1 / math.log2(5)) / 3)
    with pytest.raises(SystemExit, match="same test rows"):
        paired.compare(rows[0], (torch.tensor([4, 5, 7]), rows[1][1]))
    assert f"| NDCG@10 | {(1 + 1 / math.log2(5)) / 3:.4f} |" in paired.markdown(["a", "b"], result)


def test_paired_script_writes_its_table_from_two_run_records(tmp_path, monkeypatch):
    """End to end below the model: two records in, paired.json and paired.md out; a gone checkpoint is named;
    a label with several seeds' records is scored on each row's mean over them."""
    import paired

    records = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"checkpoint": str(tmp_path / f"{name}.pth")}))
        records.append(f"{name}={path}")
    with pytest.raises(SystemExit, match="different labels"):
        paired.main(["--runs", records[0], records[0], "--data_path", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="a.pth.*is gone"):
        paired.main(["--runs", *records[:2], "--data_path", str(tmp_path), "--out", str(tmp_path / "out")])
    rows = {str(tmp_path / "a.pth"): torch.tensor([0.0, 1.0]), str(tmp_path / "b.pth"): torch.tensor([1.0, 1.0]),
            str(tmp_path / "c.pth"): torch.tensor([1.0, 0.0])}

    def metric_names(topk):
        return [f"{metric}@{k}" for k in topk for metric in ("hit", "ndcg")]

    monkeypatch.setattr(paired, "row_figures", lambda record, data_path, topk: (
        torch.tensor([3, 4]), {key: rows[record["checkpoint"]] for key in metric_names(topk)}))
    paired.main(["--runs", *records[:2], "--data_path", str(tmp_path), "--out", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "paired.json").read_text())
    assert written["metrics"]["ndcg@10"]["mean"] == pytest.approx(0.5) and written["runs"]["b"][0].endswith("b.json")
    assert list(written["metrics"]) == ["hit@10", "ndcg@10"]
    assert "| HIT@10 | 0.5000 | 1.0000 | +0.5000 |" in (tmp_path / "out" / "paired.md").read_text()
    paired.main(["--runs", *records[:2], "--data_path", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--topk", "10", "50"])
    assert list(json.loads((tmp_path / "out" / "paired.json").read_text())["metrics"]) == metric_names((10, 50))
    assert "| HIT@50 | 0.5000 | 1.0000 | +0.5000 |" in (tmp_path / "out" / "paired.md").read_text()
    with pytest.raises(SystemExit, match="--topk takes cut-offs of 1 or more"):
        paired.main(["--runs", *records[:2], "--data_path", str(tmp_path), "--out", str(tmp_path / "out"),
                     "--topk", "0"])
    seeds = records[1] + "," + records[2].partition("=")[2]  # b's rows [1, 1] and c's [1, 0]: mean [1, 0.5]
    paired.main(["--runs", records[0], seeds, "--data_path", str(tmp_path), "--out", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "paired.json").read_text())
    assert written["metrics"]["hit@10"]["second"] == pytest.approx(0.75) and len(written["runs"]["b"]) == 2
    assert written["metrics"]["hit@10"]["mean"] == pytest.approx(0.25)
    assert "mean over 1 and 2 runs" in (tmp_path / "out" / "paired.md").read_text()
    with pytest.raises(SystemExit, match="RUN_RECORD.json\\[,"):
        paired.main(["--runs", records[0], "b=", "--data_path", str(tmp_path), "--out", str(tmp_path / "out")])
    monkeypatch.setattr(paired, "row_figures", lambda record, data_path, topk: (
        torch.tensor([3, 4 if record["checkpoint"].endswith("b.pth") else 5]), {key: rows[record["checkpoint"]]
                                                                               for key in metric_names(topk)}))
    with pytest.raises(SystemExit, match="same test rows"):
        paired.main(["--runs", records[0], seeds, "--data_path", str(tmp_path), "--out", str(tmp_path / "out")])


def test_bucket_table_shows_no_spread_for_a_single_seed():
    """One seed has no std: '± 0.0000' beside it would read as a measured, perfectly stable mean."""
    import torch

    import coldstart

    split = coldstart.bucket_metrics(torch.tensor([0, 3, 12, 9]), torch.tensor([0, 2, 2, 25]))
    per_run = {"one": [split], "two": [split, split]}
    lines = coldstart.markdown(coldstart.aggregate(per_run), "hit@10", {"one": 1, "two": 2}).splitlines()
    assert lines[3] == "| one | 0.7500 | 1.0000 | 0.5000 | - | - | 1.0000 |"
    assert lines[4].startswith("| two | 0.7500 ± 0.0000 | 1.0000 ± 0.0000 | 0.5000 ± 0.0000 | - |")


def test_new_items_protocol_end_to_end_on_the_toy_data(toy):
    """Protocol (b) --quick: split, derived data, one sweep run per model, new items added, both row sets
    ranked; MSM4SR-inductive keeps no per-item weight, so the served ranking must equal that of the same
    weights over the whole catalogue from the start."""
    import coldstart
    import torch
    from new_items import read_parts, write_derived

    from recbole_missrec.quick_start import load_data_and_model

    models = ["MISSRec-inductive", "MISSRec-transductive", "MSM4SR-inductive", "SASRec"]
    coldstart.main(["new-items", "--dataset", "toy", "--data_path", str(toy), "--seeds", "1", "--quick",
                    "--split-seed", "3", "--config-files", str(toy / "toy.yaml"), "--out", str(toy / "out"),
                    "--sweep-out", str(toy / "sweep"), "--work", str(toy / "work"), "--threads", "1"])
    report = json.loads((toy / "out" / "coldstart_new_items.json").read_text())
    split, counts = report["split"], report["split"]["counts"]
    held = set(split["held_out"])
    assert counts["held_out"] == len(held) == 6 and counts["new_item_rows"] == 5 and split["vanished"] == ["1"]
    derived = toy / "work" / "data" / "toy-new"
    for part in ("train", "valid", "test"):
        lines = (derived / f"toy-new.{part}.inter").read_text().splitlines()[1:]
        assert len(lines) == counts["rows"][part]["derived"]
        assert not {token for line in lines for token in line.split("\t", 1)[1].split()} & (held | {"1"})
    assert os.path.islink(derived / "toy-new.feat1CLS") and os.path.islink(derived / "toy-new.item2index")
    assert list(report["per_run"]) == models
    for variant in models:
        (result,) = report["per_run"][variant]
        assert result["new"]["rows"] == 5 and result["warm"]["rows"] == counts["rows"]["test"]["derived"]
    assert "ID cosine is 0" in report["notes"]["MISSRec-transductive"] and "SASRec" not in report["notes"]
    assert report["random"]["hit@10"] == pytest.approx(10 / 60)
    assert "| MSM4SR-inductive | 1 |" in (toy / "out" / "coldstart_new_items.md").read_text()
    assert (toy / "out" / "coldstart_new_items.png").read_bytes()[:4] == b"\x89PNG"

    parts = read_parts(toy / "toy", "toy")  # the whole catalogue under the derived name
    write_derived(toy / "toy", "toy", str(toy / "full" / "toy-new"), parts, {p: split.rows for p, split in parts.items()})
    record = json.loads((toy / "sweep" / "runs" / "MSM4SR-inductive__seed1.json").read_text())
    _, model, dataset, _, _, test_data = load_data_and_model(record["checkpoint"], str(toy / "full"))
    ranks, ties, targets = coldstart.target_ranks(model, test_data, "cpu")
    new = torch.tensor([token in held for token in dataset.id2token("item_id", targets)])
    expected = coldstart.metrics_at_k(ranks[new], ties[new])
    served = report["per_run"]["MSM4SR-inductive"][0]["new"]
    assert expected["rows"] == 5 and expected["ndcg@10"] == pytest.approx(served["ndcg@10"], abs=1e-6)


def test_few_users_protocol_keeps_a_share_of_the_users_training_rows(toy):
    """Protocol (c) --quick: the derived train file holds every prefix row of the chosen users and no other
    row, validation and test are the source's, the sweep trains on it, and a second sweep into the same
    folder with another share is refused before it trains."""
    import coldstart

    argv = ["few-users", "--dataset", "toy", "--data_path", str(toy), "--models", "SASRec-length-aware",
            "--seeds", "1", "--quick", "--share", "0.25", "--config-files", str(toy / "toy.yaml"),
            "--out", str(toy / "sweep"), "--work", str(toy / "work"), "--threads", "1", "--no-plot"]
    coldstart.main(argv)
    split = json.loads((toy / "sweep" / "split.json").read_text())
    source = {part: (toy / "toy" / f"toy.{part}.inter").read_text().splitlines() for part in ("train", "valid", "test")}
    derived = {part: (toy / "work" / "data" / "toy-users25" / f"toy-users25.{part}.inter").read_text().splitlines()
               for part in ("train", "valid", "test")}
    assert derived["valid"] == source["valid"] and derived["test"] == source["test"]
    users = {line.split("\t")[0] for line in source["train"][1:]}
    kept = {line.split("\t")[0] for line in derived["train"][1:]}
    assert split["counts"]["kept_users"] == len(kept) == round(0.25 * len(users))
    assert derived["train"][1:] == [line for line in source["train"][1:] if line.split("\t")[0] in kept]
    (record,) = json.loads((toy / "sweep" / "results.json").read_text())["runs"]
    assert record["status"] == "ok" and record["dataset"] == "toy-users25"
    with pytest.raises(SystemExit, match="records another split"):
        coldstart.main([value if value != "0.25" else "0.5" for value in argv])


def test_derived_sweeps_pass_the_checkpoints_on():
    import argparse

    import coldstart

    args = argparse.Namespace(config_files=[], seeds=[1], epochs=None, stopping_step=None, threads=None,
                              overrides=[], quick=True, no_plot=True, pretrained=["MISSRec=m.pth"])
    argv = coldstart.sweep_argv(args, "toy", "toy-users10", "w", "o", ["MISSRec-inductive"])
    assert argv[argv.index("--dataset") + 1] == "toy-users10" and argv[-4:-2] == ["--pretrained", "MISSRec=m.pth"]


def test_sasrec_new_items_get_untrained_rows_as_sasrec_draws_them():
    import types

    import torch
    from new_items import grow_item_embedding, ranks_in_top_k

    trained = torch.nn.Embedding(5, 8, padding_idx=0)
    model = types.SimpleNamespace(item_embedding=trained, initializer_range=0.02, n_items=5)
    grow_item_embedding(model, 4000, torch.Generator().manual_seed(1))
    rows = model.item_embedding.weight
    assert model.n_items == 4005 and torch.equal(rows[:5], trained.weight)
    assert float(rows[5:].std()) == pytest.approx(0.02, rel=0.02) and abs(float(rows[5:].mean())) < 1e-3
    again = types.SimpleNamespace(item_embedding=trained, initializer_range=0.02, n_items=5)
    grow_item_embedding(again, 4000, torch.Generator().manual_seed(1))
    assert torch.equal(again.item_embedding.weight, rows)  # seeded
    assert ranks_in_top_k([["a", "b"], ["c", "d"]], ["b", "x"], 2).tolist() == [1, 2]


def test_best_epoch_is_the_one_whose_checkpoint_early_stopping_keeps():
    history = [{"epoch": 0, "valid_score": 0.1}, {"epoch": 1, "valid_score": 0.2}, {"epoch": 2, "train_loss": 1.0},
               {"epoch": 3, "valid_score": 0.2}, {"epoch": 4, "valid_score": 0.15}]
    assert best_epoch(history) == 3  # RecBole saves on a tie, so the later of two equal scores is the model kept
    assert best_epoch(history, bigger=False) == 0
    assert best_epoch([{"epoch": 0, "train_loss": 1.0}]) is None


def test_an_unfinished_run_is_reported_from_its_progress_file(tmp_path):
    """A run stopped before early stopping ended it: its figures so far, its best checkpoint so far tested."""
    import progress

    write_benchmark_dataset(tmp_path)
    work, out = tmp_path / "work", tmp_path / "out"
    config = dict(TOY_LAYOUT, data_path=str(tmp_path), checkpoint_dir=str(work / "saved" / "MISSRec-inductive__seed7"),
                  train_stage="inductive_ft", hidden_size=32, inner_size=32, n_heads=2, epochs=5, seed=7,
                  learning_rate=0.01, topk=[5, 10], valid_metric="NDCG@10", state="WARNING")
    with training_stops_at_epoch(3, KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        run_recbole_missrec("MISSRec", "toy", config_dict=config, resume=True)
    os.makedirs(work, exist_ok=True)
    with contextlib.chdir(work):
        (record,) = progress.report(str(work), str(out))
    assert (record["variant"], record["seed"], record["epochs_run"]) == ("MISSRec-inductive", 7, 3)
    scores = record["valid_score_per_epoch"]
    assert list(scores) == [0, 1, 2] and record["best_valid_score"] == max(scores.values())
    assert scores[record["best_epoch"]] == record["best_valid_score"]
    assert record["epochs_without_improvement"] == 2 - record["best_epoch"]
    with contextlib.chdir(work):
        assert record["test_of_best_checkpoint"] == reevaluated_test_result(record["checkpoint"])
    assert "not converged" in (out / "unfinished" / "MISSRec-inductive__seed7.md").read_text()

    os.makedirs(out / "runs")
    (out / "runs" / "MISSRec-inductive__seed7.json").write_text(json.dumps({"status": "ok"}))
    assert progress.report(str(work), str(out)) == [] and not (out / "unfinished").exists()


def test_curves_compare_finished_and_unfinished_runs_at_equal_epochs(tmp_path):
    """A finished record (its history) against an unfinished one (progress.py's per-epoch scores), over the
    epochs both ran; records of another validation metric, or not records at all, are refused by name."""
    import curves

    finished_record = {"config": {"seed": 1}, "history": [
        {"epoch": 0, "train_loss": 2.0, "valid_score": 0.0100}, {"epoch": 1, "train_loss": 1.0, "valid_score": 0.0200},
        {"epoch": 2, "train_loss": 0.5, "valid_score": 0.0300}, {"epoch": 3, "train_loss": 0.4}]}
    unfinished_record = {"valid_metric": "NDCG@10", "valid_score_per_epoch": {"0": 0.0150, "1": 0.0200, "2": 0.0250}}
    (tmp_path / "scratch.json").write_text(json.dumps(finished_record))
    (tmp_path / "probe.json").write_text(json.dumps(unfinished_record))
    out = tmp_path / "out"
    curves.main(["--runs", f"scratch={tmp_path / 'scratch.json'}", f"probe={tmp_path / 'probe.json'}", "--out", str(out)])
    written = json.loads((out / "curves.json").read_text())
    assert written["valid_metric"] == "NDCG@10"
    diff = written["runs"][1]["against_first"]
    assert diff["epochs"] == [0, 2] and (diff["leads"], diff["ties"], diff["trails"]) == (1, 1, 1)
    assert math.isclose(diff["mean"], 0.0, abs_tol=1e-12) and math.isclose(diff["min"], -0.005) and math.isclose(diff["max"], 0.005)
    assert "| probe | 0-2 | +0.0000 | -0.0050 | +0.0050 | 1 / 1 / 1 |" in (out / "curves.md").read_text()

    unfinished_record["valid_metric"] = "HIT@10"
    (tmp_path / "probe.json").write_text(json.dumps(unfinished_record))
    (tmp_path / "junk.json").write_text("[1, 2]")
    for bad, message in [("probe", "different validation metrics"), ("junk", "junk.json is not a run record")]:
        with pytest.raises(SystemExit, match=message):
            curves.main(["--runs", f"a={tmp_path / 'scratch.json'}", f"b={tmp_path / (bad + '.json')}",
                         "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_curves_every_n_shortens_the_table_but_not_the_comparison(tmp_path):
    """--every 3 keeps epochs 0, 3, 6 and each run's best (4) and last (5, 6); the differences still span every
    epoch both ran, and a non-positive N is refused before anything is written."""
    import curves

    reference = {"valid_metric": "NDCG@10", "valid_score_per_epoch": {str(e): 0.01 * e for e in range(7)}}
    probe = {"valid_metric": "NDCG@10", "valid_score_per_epoch": {"0": 0.0, "1": 0.02, "2": 0.03, "3": 0.03,
                                                                  "4": 0.05, "5": 0.04}}
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    runs = [f"reference={tmp_path / 'reference.json'}", f"probe={tmp_path / 'probe.json'}"]
    curves.main(["--runs", *runs, "--out", str(tmp_path / "out"), "--every", "3"])
    text = (tmp_path / "out" / "curves.md").read_text()
    assert [line.split(" | ")[0][2:] for line in text.splitlines() if line[2:3].isdigit()] == ["0", "3", "4", "5", "6"]
    assert text.startswith("Valid NDCG@10 every 3 epochs, with each run's best and last")
    assert "| probe | 0-5 | +0.0033 | -0.0100 | +0.0100 | 3 / 2 / 1 |" in text
    written = json.loads((tmp_path / "out" / "curves.json").read_text())
    assert sorted(written["runs"][1]["curve"]) == ["0", "1", "2", "3", "4", "5"]
    with pytest.raises(SystemExit, match="--every takes a positive number"):
        curves.main(["--runs", *runs, "--out", str(tmp_path / "refused"), "--every", "0"])
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("content", ["{\"status\": \"ok\"", "[1, 2]"])
def test_the_scripts_own_records_when_corrupt_end_naming_the_file_and_the_fix(tmp_path, content):
    """A truncated or foreign JSON file where a script expects its own record (run record, split record,
    scaling results) ends the script with the file's name and what to do, and stays on disk as it was."""
    import coldstart
    import run
    import scaling
    from report import load_runs

    (tmp_path / "runs").mkdir()
    record = tmp_path / "runs" / "SASRec__seed1.json"
    record.write_text(content)
    readers = [
        (lambda: run.finished(str(record)), "is not a run record of run.py .*run the sweep again"),
        (lambda: load_runs(str(tmp_path)), "is not a run record of run.py .*run the sweep again"),
        (lambda: coldstart.settle_split(str(record), {"holdout": 0.2, "split_seed": 1, "held_out": []}),
         "is not a split record of coldstart.py .*choose another output folder"),
        (lambda: scaling.previous_results(str(record), {"threads": 1}),
         "is not a results file of scaling.py .*measure every part again"),
    ]
    for read, message in readers:
        with pytest.raises(SystemExit, match=f"{re.escape(str(record))}.*{message}"):
            read()
    assert record.read_text() == content


def test_targets_report_how_cold_each_split_is_and_what_the_mix_explains(tmp_path):
    """Training interactions counted from the files as ``buckets`` counts them; the valid and test targets'
    bucket shares; a scored run's test NDCG@10 re-weighted to the valid mix, beside its best valid score
    (found by seed, or by test figure in results written before they carried a seed)."""
    import coldstart

    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    files = {"train": ["1\t5\t6", "1\t5 6\t7", "2\t6\t5", "2\t6 5\t6"],  # counts: 5 -> 2, 6 -> 3, 7 -> 1
             "valid": ["1\t5 6 7\t6", "2\t6 5 6\t8"],  # targets with 3 and 0 interactions
             "test": ["1\t5 6 7 6\t8", "2\t6 5 6 8\t9"]}  # 0 and 0
    for part, rows in files.items():
        (folder / f"toy.{part}.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n"
                                                  + "\n".join(rows) + "\n")
    results = tmp_path / "results" / "sweep"
    (results / "runs").mkdir(parents=True)
    scores = {"all": {"ndcg@10": 0.1, "rows": 2}, "0": {"ndcg@10": 0.1, "rows": 2}, "1-4": {"rows": 0},
              "5-9": {"rows": 0}, "10-19": {"rows": 0}, ">=20": {"rows": 0}}
    per_run = {"A": [dict(scores, seed=1, **{"recbole_test_ndcg@10": 0.1})],
               "B": [dict(scores, **{"recbole_test_ndcg@10": 0.2})]}
    per_run["B"][0]["1-4"] = {"ndcg@10": 0.5, "rows": 1}
    per_run["B"].append(dict(scores, all={"ndcg@10": 0.9, "rows": 2}, **{"recbole_test_ndcg@10": 0.7}))  # no record
    (results / "coldstart_buckets.json").write_text(json.dumps({"per_run": per_run}))
    for variant, seed, valid, test in (("A", 1, 0.3, 0.1), ("B", 1, 0.5, 0.2), ("B", 2, 0.9, 0.25)):
        (results / "runs" / f"{variant}__seed{seed}.json").write_text(json.dumps(
            {"variant": variant, "seed": seed, "status": "ok", "config": {}, "best_valid_score": valid,
             "test": {"ndcg@10": test}}))
    out = tmp_path / "out"
    coldstart.main(["targets", "--dataset", "toy", "--data_path", str(tmp_path / "data"), "--results", str(results),
                    "--out", str(out)])
    report = json.loads((out / "target_popularity.json").read_text())
    assert report["mix"]["valid"] == {"0": 0.5, "1-4": 0.5, "5-9": 0.0, "10-19": 0.0, ">=20": 0.0}
    assert report["mix"]["test"]["0"] == 1.0
    first, second = report["rows"]
    assert (first["variant"], first["valid"], first["test"]) == ("A", 0.3, 0.1)
    assert first["test_at_valid_mix"] == pytest.approx(0.1)  # only bucket 0 has test rows: its weight renormalised
    assert (second["valid"], second["test_at_valid_mix"]) == (0.5, pytest.approx(0.5 * 0.1 + 0.5 * 0.5))
    assert "| sweep | B | 1 | 0.5000 | 0.1000 | 0.3000 | 50% |" in (out / "target_popularity.md").read_text()
    (results / "runs" / "B__seed1.json").unlink()  # no record left for B: every scored run, no valid score
    coldstart.main(["targets", "--dataset", "toy", "--data_path", str(tmp_path / "data"), "--results", str(results),
                    "--out", str(out)])
    assert "| sweep | B | 2 | - | 0.5000 |" in (out / "target_popularity.md").read_text()
    (results / "coldstart_buckets.json").unlink()
    with pytest.raises(SystemExit, match="coldstart.py buckets --results"):
        coldstart.main(["targets", "--dataset", "toy", "--data_path", str(tmp_path / "data"), "--results", str(results)])
