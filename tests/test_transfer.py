import pytest
import torch

from conftest import fake_dataset, model_config, tiny_pretrain_config, tiny_run_config, write_benchmark_dataset
from conftest import reevaluated_test_result, write_pretrain_dataset
from recbole_missrec.model import MISSRec
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.trainer import load_state

BACKBONE = ("position_embedding.", "transformer.")


@pytest.fixture
def pretrained(tmp_path):
    """A text-only checkpoint pre-trained for one epoch, and a text+image downstream dataset."""
    write_pretrain_dataset(tmp_path)
    write_benchmark_dataset(tmp_path)
    result = run_recbole_missrec("MISSRec", "pt", config_dict=tiny_pretrain_config(tmp_path, epochs=1))
    return result["checkpoint"]


def finetune(tmp_path, checkpoint, stage, **overrides):
    config = tiny_run_config(tmp_path, epochs=2, topk=[5, 10], train_stage=stage, **overrides)
    return run_recbole_missrec("MISSRec", "toy", config_dict=config, pretrained=checkpoint)


@pytest.mark.parametrize("stage", ["inductive_ft", "transductive_ft"])
def test_parameter_efficient_transfer(tmp_path, pretrained, stage):
    result = finetune(tmp_path, pretrained, stage)
    report = result["transfer"]
    assert {"adapters.text.weight", "input_norm.weight", "position_embedding.weight"} <= set(report["loaded"])
    assert any(name.startswith("transformer.decoder") for name in report["loaded"])
    assert report["domain_specific"] == ["interest_centroids", "interest_lookup", "interests_ready"]
    new = {"adapters.img.bias", "adapters.img.weight", "fusion_factor"}  # the pre-training set had no images
    assert set(report["new"]) == (new | {"item_embedding.weight"} if stage == "transductive_ft" else new)
    # trainable: adapters (16->32, 12->32), input LayerNorm, fusion factor (+ 30 items + pad x 32 IDs)
    expected = (16 * 32 + 32) + (12 * 32 + 32) + 2 * 32 + 1 + (31 * 32 if stage == "transductive_ft" else 0)
    assert result["trainable_params"] == expected < result["total_params"]
    assert dict(result["test_result"]) == reevaluated_test_result(result["checkpoint"])

    before, after = load_state(pretrained)["state_dict"], load_state(result["checkpoint"])["state_dict"]
    for name, value in before.items():
        if name.startswith(BACKBONE):
            assert torch.equal(value, after[name]), name  # frozen
    assert not torch.equal(before["adapters.text.weight"], after["adapters.text.weight"])


def test_freeze_backbone_off_trains_everything(tmp_path, pretrained):
    result = finetune(tmp_path, pretrained, "inductive_ft", freeze_backbone=False)
    assert result["trainable_params"] == result["total_params"]
    before, after = load_state(pretrained)["state_dict"], load_state(result["checkpoint"])["state_dict"]
    assert not torch.equal(before["transformer.encoder.layers.0.linear1.weight"],
                           after["transformer.encoder.layers.0.linear1.weight"])


def test_checkpoint_of_other_dimensions_fails_clearly():
    source = MISSRec(model_config(train_stage="inductive_ft", hidden_size=8, inner_size=16), fake_dataset())
    target = MISSRec(model_config(train_stage="inductive_ft"), fake_dataset())
    with pytest.raises(ValueError, match="other dimensions.*hidden_size"):
        target.load_pretrained(source.state_dict())
    wider_text = MISSRec(model_config(train_stage="inductive_ft"), fake_dataset(dims=(14, 6)))
    with pytest.raises(ValueError, match=r"adapters\.text\.weight: checkpoint \(16, 14\), this model \(16, 10\)"):
        target.load_pretrained(wider_text.state_dict())


def test_adapter_of_another_kind_starts_afresh_and_the_backbone_transfers():
    linear = MISSRec(model_config(train_stage="inductive_ft"), fake_dataset()).state_dict()
    moe = MISSRec(model_config(train_stage="inductive_ft", adapter="moe"), fake_dataset())
    fresh = {name: value.clone() for name, value in moe.state_dict().items() if name.startswith("adapters.")}
    report = moe.load_pretrained(linear)
    assert {"adapters.text.weight", "adapters.text.bias", "adapters.img.bias"} <= set(report["unused"])
    assert "adapters.text.bias" in report["new"] and "adapters.text.experts.0.weight" in report["new"]
    assert all(torch.equal(moe.state_dict()[name], value) for name, value in fresh.items())
    assert "transformer.encoder.layers.0.linear1.weight" in report["loaded"]
    assert torch.equal(moe.state_dict()["transformer.encoder.layers.0.linear1.weight"],
                       linear["transformer.encoder.layers.0.linear1.weight"])
    gated = MISSRec(model_config(train_stage="inductive_ft", adapter="moe", new_modality_init="gate"), fake_dataset())
    gated.load_pretrained(linear)
    assert gated.modality_gate.tolist() == [1.0, 1.0]  # both modalities were seen in pre-training: gates open
    back = MISSRec(model_config(train_stage="inductive_ft"), fake_dataset()).load_pretrained(moe.state_dict())
    assert "adapters.text.experts.0.weight" in back["unused"] and "adapters.text.weight" in back["new"]


def test_transfer_skips_domain_specific_weights_of_another_item_set():
    source = MISSRec(model_config(), fake_dataset(n_items=20))  # transductive, 20 items
    target = MISSRec(model_config(), fake_dataset(n_items=12))
    report = target.load_pretrained(source.state_dict())
    assert "item_embedding.weight" in report["domain_specific"] and "item_embedding.weight" in report["new"]
    assert target.n_interests != source.n_interests and not bool(target.interests_ready)


def test_peft_parameter_counts_match_the_reference():
    config = dict(hidden_size=300, inner_size=256, n_heads=4, MAX_ITEM_LIST_LENGTH=50)
    for stage, ids in (("inductive_ft", 0), ("transductive_ft", 300 * 20)):
        model = MISSRec(model_config(train_stage=stage, **config), fake_dataset(n_items=20, dims=(512, 512)))
        model.freeze_backbone()
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 308_401 + ids  # spec §3.1


def test_inductive_model_scores_an_unseen_item_by_its_features():
    dataset = fake_dataset()
    for store in dataset.item_features.values():  # item 11: a "new" item that looks exactly like item 4
        store.table[11] = store.table[4]
        store.slot_mask[11] = store.slot_mask[4]
        store.present[11] = store.present[4]
    torch.manual_seed(0)
    model = MISSRec(model_config(train_stage="inductive_ft"), dataset)
    model.discover_interests(torch.Generator().manual_seed(0))
    scores = model.eval().full_sort_predict({"item_id_list": torch.tensor([[1, 2, 3]]), "item_length": torch.tensor([3])})
    assert torch.allclose(scores[0, 11], scores[0, 4])


def test_transfer_switches_for_an_unseen_modality_and_frozen_dropout():
    source = MISSRec(model_config(train_stage="inductive_ft"), fake_dataset(dims=(10,)))  # text only
    model = MISSRec(model_config(train_stage="inductive_ft", new_modality_init="gate", frozen_dropout=False,
                                 hidden_dropout_prob=0.5), fake_dataset())
    report = model.load_pretrained(source.state_dict())
    assert "adapters.img.weight" in report["new"]
    assert model.modality_gate.tolist() == [1.0, 0.0]  # text (seen in pre-training), img (new)
    model.discover_interests(torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.adapters["img"].weight.mul_(100)  # however large the new tokens, the closed gate keeps them out
    seq = torch.tensor([[1, 2, 4]])
    tokens, _ = model.eval()._decoder_input(seq, model.item_present[seq])
    text_only = model.modality_tokens(seq)[..., 0, :] + model.position_embedding.weight[:3]
    assert torch.allclose(tokens, model.input_norm(text_only), atol=1e-6)
    model.freeze_backbone()
    model.train()
    assert not model.transformer.training and model.adapters.training and model.dropout.training
    model.eval()
    model.train()
    assert not model.transformer.training  # stays in evaluation mode through train()/eval() cycles
    kept = MISSRec(model_config(train_stage="inductive_ft", hidden_dropout_prob=0.5), fake_dataset())
    kept.freeze_backbone()
    assert kept.train().transformer.training  # frozen_dropout: True keeps the reference's dropout
    moe = MISSRec(model_config(train_stage="inductive_ft", new_modality_init="gate", adapter="moe"), fake_dataset())
    report = moe.load_pretrained(MISSRec(model_config(train_stage="inductive_ft", adapter="moe"), fake_dataset(dims=(10,))).state_dict())
    assert "adapters.img.experts.0.weight" in report["new"] and "adapters.text.experts.0.weight" in report["loaded"]
    assert moe.modality_gate.tolist() == [1.0, 0.0]  # an MoE adapter's weights are new under their own names


def test_feature_norm_rescales_each_store():
    from recbole_missrec.data.feature_store import store_from_rows

    store = store_from_rows((3 * torch.randn(5, 4)).numpy())
    unit = store.normalised("l2")
    assert torch.allclose(unit.table.norm(dim=-1), torch.ones(5, 1))
    mean = store.normalised("mean")
    assert torch.allclose(mean.table.norm(dim=-1).mean(), torch.tensor(1.0))
    assert torch.allclose(mean.table / store.table, (mean.table / store.table)[0, 0, 0].expand(5, 1, 4))
    assert store.normalised("none") is store
    assert torch.allclose(store.normalised("l2", scale=10.0).table, 10 * unit.table)
    assert torch.allclose(store.normalised("none", scale=2.0).table, 2 * store.table)
    with pytest.raises(ValueError, match="feature_scale"):
        store.normalised("l2", scale=0.0)
