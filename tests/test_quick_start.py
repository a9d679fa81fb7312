import os

import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from conftest import SHARED_DATA, reevaluated_test_result, tiny_run_config, training_stops_at_epoch, write_benchmark_dataset
from recbole_missrec.data.feature_file import FeatureFileError
from recbole_missrec.model import MISSRec
from recbole_missrec.config import PluginConfig
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.trainer import CheckpointError, PluginTrainer, load_state
from recbole_missrec.utils import create_dataset, get_trainer

METRICS = ("hit@5", "hit@10", "ndcg@5", "ndcg@10")


def check_result(result, epochs):
    assert set(METRICS) <= set(result["test_result"])
    assert dict(result["test_result"]) == reevaluated_test_result(result["checkpoint"])  # the saved best model's
    assert len(result["history"]) == epochs
    assert all(record["train_seconds"] > 0 and "valid_score" in record for record in result["history"])


def test_missrec_end_to_end_on_benchmark_files(tmp_path):
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=3, learning_rate=0.01, topk=[5, 10], valid_metric="NDCG@10")
    result = run_recbole_missrec("MISSRec", "toy", config_dict=config)
    check_result(result, epochs=3)
    losses = [record["train_loss"] for record in result["history"]]
    assert losses[-1] < losses[0]
    assert os.path.isfile(result["checkpoint"])
    assert result["trainable_params"] == result["total_params"] > 0


def valid_scores(result):
    return [record["valid_score"] for record in result["history"]]


class Crash(Exception):
    """Stands in for a kill between epochs."""


@pytest.mark.parametrize("model", ["MISSRec", "SASRec"])
def test_a_crashed_run_with_validation_resumes_bit_for_bit(tmp_path, model):
    write_benchmark_dataset(tmp_path)
    straight_config = tiny_run_config(tmp_path, epochs=4, learning_rate=0.01, topk=[5, 10], valid_metric="NDCG@10",
                                      checkpoint_dir=str(tmp_path / "straight"))
    straight = run_recbole_missrec(model, "toy", config_dict=straight_config, resume=True)

    crashed_config = dict(straight_config, checkpoint_dir=str(tmp_path / "crashed"))
    with training_stops_at_epoch(2, Crash), pytest.raises(Crash):
        run_recbole_missrec(model, "toy", config_dict=crashed_config, resume=True)
    resumed = run_recbole_missrec(model, "toy", config_dict=crashed_config, resume=True)

    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2, 3]
    assert [r["epoch"] for r in resumed["history"] if r.get("resumed")] == [2]  # the first epoch of the new process
    assert not any(r.get("resumed") for r in straight["history"])
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in straight["history"]]
    assert valid_scores(resumed) == valid_scores(straight)
    assert resumed["test_result"] == straight["test_result"]
    expected, actual = load_state(straight["checkpoint"]), load_state(resumed["checkpoint"])
    assert expected["epoch"] == actual["epoch"]
    for name, value in expected["state_dict"].items():
        assert torch.equal(value, actual["state_dict"][name]), name

    again = run_recbole_missrec(model, "toy", config_dict=crashed_config, resume=True)  # finished: no more training
    assert again["history"] == resumed["history"] and again["test_result"] == resumed["test_result"]


def test_a_progress_file_of_another_model_is_refused(tmp_path):
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=1, topk=[5, 10])
    run_recbole_missrec("SASRec", "toy", config_dict=config, resume=True)
    (progress,) = [name for name in os.listdir(tmp_path / "saved") if name.endswith("-progress.pth")]
    with pytest.raises(CheckpointError, match=rf"{progress} is not a MISSRec progress file .* delete it"):
        run_recbole_missrec("MISSRec", "toy", config_dict=config, resume=str(tmp_path / "saved" / progress))


def test_a_larger_budget_continues_a_stopped_run_as_a_fresh_run_with_it(tmp_path):
    """An ended run resumed with a longer patience, then with more epochs, trains on from its last epoch and ends
    where a fresh run with the larger budget ends, bit for bit, without repeating the stored epochs."""
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=6, learning_rate=0.01, topk=[5, 10], stopping_step=0)
    fresh = run_recbole_missrec("SASRec", "toy", config_dict=dict(config, epochs=8, stopping_step=1,
                                                                   checkpoint_dir=str(tmp_path / "fresh")), resume=True)
    stopped = run_recbole_missrec("SASRec", "toy", config_dict=config, resume=True)
    assert len(stopped["history"]) < 6  # patience 0 ended it early: there is something to continue

    longer_patience = run_recbole_missrec("SASRec", "toy", config_dict=dict(config, stopping_step=1), resume=True)
    assert valid_scores(longer_patience) == valid_scores(fresh)[:6]
    more_epochs = run_recbole_missrec("SASRec", "toy", config_dict=dict(config, epochs=8, stopping_step=1), resume=True)
    assert [r["epoch"] for r in more_epochs["history"]] == list(range(8))
    assert [r["train_loss"] for r in more_epochs["history"]] == [r["train_loss"] for r in fresh["history"]]
    assert valid_scores(more_epochs) == valid_scores(fresh)
    assert more_epochs["test_result"] == fresh["test_result"]


def test_a_checkpoint_dir_moved_whole_still_resumes(tmp_path):
    """The progress file names its best checkpoint by the path it had; the namesake beside it is taken."""
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=2, topk=[5, 10], checkpoint_dir=str(tmp_path / "before"))
    ended = run_recbole_missrec("SASRec", "toy", config_dict=config, resume=True)
    os.rename(tmp_path / "before", tmp_path / "after")
    moved = run_recbole_missrec("SASRec", "toy", config_dict=dict(config, checkpoint_dir=str(tmp_path / "after"),
                                                                  epochs=3), resume=True)
    assert [r["epoch"] for r in moved["history"]] == [0, 1, 2]
    assert os.path.dirname(moved["checkpoint"]) == str(tmp_path / "after") and not (tmp_path / "before").exists()
    assert valid_scores(moved)[:2] == valid_scores(ended)


def test_a_progress_file_of_other_settings_is_refused(tmp_path):
    """A finished run resumed with a shorter patience or another learning rate would report its old result as
    the new settings' run."""
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=1, topk=[5, 10], stopping_step=2)
    run_recbole_missrec("SASRec", "toy", config_dict=config, resume=True)
    (progress,) = [name for name in os.listdir(tmp_path / "saved") if name.endswith("-progress.pth")]
    for key, value, change in (("stopping_step", 1, "stopping_step: 2 -> 1"),
                               ("learning_rate", 0.01, "learning_rate: 0.001 -> 0.01")):
        with pytest.raises(CheckpointError, match=rf"{progress} continues a run with other settings \({change}\)"
                                                  rf".* delete .*{progress}"):
            run_recbole_missrec("SASRec", "toy", config_dict=dict(config, **{key: value}), resume=True)
    again = run_recbole_missrec("SASRec", "toy", config_dict=dict(config, show_progress=True), resume=True)
    assert len(again["history"]) == 1  # a logging key may change: the stored run is taken, not refused


def atomic_run_config(tmp_path):
    """An atomic ``toy.inter`` read with RecBole's default ``load_col`` (user and item only)."""
    config = tiny_run_config(tmp_path, epochs=1, topk=[5, 10], train_stage="inductive_ft", benchmark_filename=None,
                             alias_of_item_id=None, modal_type="text")
    del config["load_col"]
    return config


def test_missrec_inductive_on_atomic_inter_split_by_recbole(tmp_path):
    """RecBole splits the atomic file by time: its timestamp column is read although load_col names only user and item."""
    write_benchmark_dataset(tmp_path, atomic=True)
    result = run_recbole_missrec("MISSRec", "toy", config_dict=atomic_run_config(tmp_path))
    check_result(result, epochs=1)


def test_an_atomic_file_without_timestamps_is_named(tmp_path):
    folder = write_benchmark_dataset(tmp_path, atomic=True)
    path = os.path.join(folder, "toy.inter")
    with open(path) as handle:
        rows = [line.rstrip("\n").split("\t")[:2] for line in handle]
    with open(path, "w") as handle:
        handle.writelines("\t".join(row) + "\n" for row in rows)
    with pytest.raises(ValueError, match=r"toy\.inter has no timestamp column .* add a 'timestamp:float' column"):
        run_recbole_missrec("MISSRec", "toy", config_dict=atomic_run_config(tmp_path))


def test_recbole_baseline_through_the_same_entry_point(tmp_path):
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=1, topk=[5, 10], hidden_size=16, inner_size=16)
    result = run_recbole_missrec("SASRec", "toy", config_dict=config)
    check_result(result, epochs=1)
    assert load_state(result["checkpoint"])["model"] == "SASRec"  # weights-only checkpoint
    assert get_trainer(None, "MISSRec", "inductive_ft") is PluginTrainer


def test_checkpoint_round_trip_gives_identical_scores(tmp_path):
    write_benchmark_dataset(tmp_path)
    config = PluginConfig(model=MISSRec, dataset="toy", config_dict=tiny_run_config(tmp_path, topk=[5, 10]))
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    model = MISSRec(config, train_data._dataset)
    trainer = PluginTrainer(config, model)
    trainer.fit(train_data, valid_data, saved=True)
    result = trainer.evaluate(test_data, load_best_model=True)

    fresh = MISSRec(config, train_data._dataset)
    fresh.load_state_dict(load_state(trainer.saved_model_file)["state_dict"])  # no re-clustering
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        assert torch.equal(model.eval().full_sort_predict(batch), fresh.eval().full_sort_predict(batch))
    assert PluginTrainer(config, fresh).evaluate(test_data, load_best_model=False) == result


def test_missing_feature_file_names_the_file(tmp_path):
    folder = write_benchmark_dataset(tmp_path)
    os.remove(os.path.join(folder, "toy.feat3CLS"))
    with pytest.raises(FeatureFileError, match=r"toy\.feat3CLS"):
        run_recbole_missrec("MISSRec", "toy", config_dict=tiny_run_config(tmp_path))
    result = run_recbole_missrec("MISSRec", "toy", config_dict=tiny_run_config(tmp_path, modal_type="text", epochs=1, topk=[5, 10]))
    check_result(result, epochs=1)


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no_such_dataset"):
        run_recbole_missrec("MISSRec", "no_such_dataset", config_dict=tiny_run_config(tmp_path))


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED_DATA, "Scientific_mm_subset")),
    reason="real data ../shared/data/Scientific_mm_subset is absent (it is not part of the repository)",
)
def test_missrec_learns_on_scientific_mm_subset(tmp_path):
    config = {
        "data_path": SHARED_DATA, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 1, "hidden_size": 64,
        "train_stage": "inductive_ft", "state": "WARNING",
    }
    result = run_recbole_missrec("MISSRec", "Scientific_mm_subset", config_dict=config)
    assert result["test_result"]["ndcg@10"] > 0.02  # random ranking of 1,585 items gives about 0.004


def test_an_empty_training_file_is_named(tmp_path):
    folder = write_benchmark_dataset(tmp_path)
    with open(os.path.join(folder, "toy.train.inter"), "w") as handle:
        handle.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
    with pytest.raises(ValueError, match=r"toy\.train\.inter has no interactions"):
        run_recbole_missrec("MISSRec", "toy", config_dict=tiny_run_config(tmp_path))


def test_pre_split_files_are_found_without_benchmark_filename(tmp_path):
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=1, topk=[5, 10], benchmark_filename=None, alias_of_item_id=None, load_col=None)
    check_result(run_recbole_missrec("MISSRec", "toy", config_dict=config), epochs=1)


def test_a_pretrained_file_that_is_no_checkpoint_is_named(tmp_path):
    write_benchmark_dataset(tmp_path)
    (tmp_path / "random.pth").write_bytes(os.urandom(512))
    with pytest.raises(CheckpointError, match=r"random\.pth is not a readable weights-only checkpoint"):
        run_recbole_missrec("MISSRec", "toy", config_dict=tiny_run_config(tmp_path), pretrained=str(tmp_path / "random.pth"))


def test_metric_topk_offset_reports_k_plus_one_under_the_label_k(tmp_path):
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=1, topk=[5, 6, 10, 11], valid_metric="NDCG@5")
    true = run_recbole_missrec("MISSRec", "toy", config_dict=config)["test_result"]
    shifted = run_recbole_missrec("MISSRec", "toy", config_dict=dict(config, topk=[5, 10], metric_topk_offset=1))
    assert shifted["test_result"]["ndcg@5"] == true["ndcg@6"] and shifted["test_result"]["hit@10"] == true["hit@11"]
