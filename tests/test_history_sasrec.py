"""HistorySASRec: RecBole's SASRec plus the plugin's history offset, run through RecBole's flow."""
import pytest
import torch
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed

from conftest import check_scores_offset, reevaluated_test_result, tiny_run_config, write_benchmark_dataset
from recbole_missrec.config import PluginConfig
from recbole_missrec.data.dataloader import data_preparation
from recbole_missrec.model import HistorySASRec
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.serving.bundle import BundleError, export_bundle
from recbole_missrec.trainer import PluginTrainer, load_state
from recbole_missrec.utils import create_dataset, get_trainer


def toy_config(tmp_path, **overrides):
    write_benchmark_dataset(tmp_path)
    return PluginConfig(model="HistorySASRec", dataset="toy",
                        config_dict=tiny_run_config(tmp_path, topk=[5, 10], **overrides))


def test_it_starts_from_sasrec_defaults_and_runs_recbole_flow(tmp_path):
    config = toy_config(tmp_path)
    assert (config["n_layers"], config["hidden_act"], config["loss_type"]) == (2, "gelu", "CE")  # RecBole's SASRec.yaml
    assert config["hidden_size"] == 32  # the user's setting still wins
    trainer = get_trainer(config["MODEL_TYPE"], "HistorySASRec")
    assert issubclass(trainer, Trainer) and not issubclass(trainer, PluginTrainer)  # RecBole's, with safe checkpoints
    dataset = create_dataset(config)
    assert type(dataset).__module__.startswith("recbole.")  # no feature files needed
    config["loss_type"] = "BPR"
    with pytest.raises(ValueError, match="loss_type: CE"):
        HistorySASRec(config, dataset)


def test_its_scores_are_sasrecs_plus_the_offset_on_history_items(tmp_path):
    config = toy_config(tmp_path, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    _, _, test_data = data_preparation(config, create_dataset(config))
    models = []
    for model_class in (SASRec, HistorySASRec):
        init_seed(config["seed"], config["reproducibility"])
        models.append(model_class(config, test_data._dataset).eval())
    plain, biased = models
    with torch.no_grad():
        biased.history_bias.bias.fill_(-0.07)  # x HISTORY_SCALE 10: -0.7 in logits
    batch = next(iter(test_data))[0]
    seq = batch["item_id_list"]

    def make_batch(targets=seq[:, 0].tolist()):
        return dict(batch.interaction, item_id=torch.tensor(targets))

    with torch.no_grad():
        for targets in (seq[:, 0].tolist(), (torch.arange(len(seq)) % (plain.n_items - 1) + 1).tolist()):
            check_scores_offset(plain, biased, make_batch, -0.7, targets)  # every row's first history item, then others


def test_it_trains_end_to_end_and_learns_to_push_seen_items_down(tmp_path):
    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=3, learning_rate=0.01, topk=[5, 10], valid_metric="NDCG@10")
    result = run_recbole_missrec("HistorySASRec", "toy", config_dict=config)
    assert dict(result["test_result"]) == reevaluated_test_result(result["checkpoint"])
    state = load_state(result["checkpoint"])
    assert state["model"] == "HistorySASRec"
    assert state["state_dict"]["history_bias.bias"].item() < -0.01  # the toy's targets seldom repeat a history item
    with pytest.raises(BundleError, match="content models"):
        export_bundle(result["checkpoint"], str(tmp_path / "bundle"))
    assert not (tmp_path / "bundle").exists()
