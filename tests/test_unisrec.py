"""UniSRec: the reference's sizes and item encoder, the pre-training terms and views, the fine-tuning modes,
parameter-efficient transfer, and every stage end to end."""
import os
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import (
    ModelConfig, check_history_offset, fake_dataset, plugin_defaults, tiny_pretrain_config, tiny_run_config,
    write_benchmark_dataset, write_pretrain_dataset,
)
from recbole_missrec.config import PluginConfig
from recbole_missrec.model import UniSRec
from recbole_missrec.model.layers import MoEAdaptor
from recbole_missrec.model.unisrec.views import VIEW_SEQ, VIEW_SEQ_LEN, VIEW_WORD_DROP, draw_view
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.trainer import load_state

SEQ = torch.tensor([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 0], [3, 0, 0, 0, 0, 0]])
LEN = torch.tensor([3, 5, 1])
QUIET = dict(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, adaptor_dropout_prob=0.0, adaptor_noise=False)


def unisrec_config(stage="transductive_ft", **overrides):
    """UniSRec's yaml defaults for ``stage`` with the fields a model reads from RecBole's Config."""
    config = ModelConfig(plugin_defaults("UniSRec", UniSRec.STAGES[stage]))
    config.update(
        USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", LIST_SUFFIX="_list", ITEM_LIST_LENGTH_FIELD="item_length",
        NEG_PREFIX="neg_", MAX_ITEM_LIST_LENGTH=6, device="cpu", train_stage=stage, hidden_size=16, inner_size=32,
    )
    config.update(overrides)
    return config


def text_dataset(n_items=12, dim=10, seed=0):
    """Text features and their word-dropped twin (``text_aug``), no image."""
    return fake_dataset(n_items=n_items, dims=(dim,), missing_rows=(), seed=seed, augmented=True)


def build(stage="transductive_ft", dataset=None, seed=0, **overrides):
    torch.manual_seed(seed)
    return UniSRec(unisrec_config(stage, **overrides), dataset or text_dataset())


def batch(target=(4, 9, 4), seq=SEQ, length=LEN):
    return {"item_id_list": seq, "item_length": length, "item_id": torch.tensor(target)}


def pretrain_batch(model, target=(4, 9, 4), seed=0):
    return model.prepare_batch(batch(target), torch.Generator().manual_seed(seed))


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- sizes ---------------------------------------------------------------------------------------
# The reference's published setting (props/UniSRec.yaml): 768-d BERT features, 8 experts, hidden 300, inner 256,
# 2 layers, histories of 50. The same 2,910,344 weights are counted on the reference's own model (unisrec.py
# at that yaml, RecBole 1.2.1, pre-training stage: SASRec without its ID table, plus the MoE adaptor).
ADAPTOR = 8 * (768 + 768 * 300) + 2 * 768 * 8  # 8 whitening experts (bias + bias-free linear), gate + noise gate
LAYER = 4 * (300 * 300 + 300) + (300 * 256 + 256) + (256 * 300 + 300) + 2 * 2 * 300  # attention, FFN, 2 LayerNorms
BACKBONE = 50 * 300 + 2 * 300 + 2 * LAYER  # position table, input LayerNorm, 2 Transformer layers


def test_parameter_counts_match_the_reference_setting():
    assert (ADAPTOR, BACKBONE, ADAPTOR + BACKBONE) == (1_861_632, 1_048_712, 2_910_344)
    dataset = text_dataset(n_items=20, dim=768)
    lengths = torch.tensor([50, 3, 4, 5, 1, 2])
    sequences = torch.randint(1, 20, (6, 50)) * (torch.arange(50) < lengths.unsqueeze(1))
    model = build("pretrain", dataset, MAX_ITEM_LIST_LENGTH=50, hidden_size=300, inner_size=256)
    interaction = model.prepare_batch(batch((3, 4, 5, 6, 7, 8), sequences, lengths), torch.Generator())
    sum(model.calculate_loss(interaction).values()).backward()
    assert trainable(model) == ADAPTOR + BACKBONE
    assert sum(p.numel() for p in model.parameters() if p.grad is not None) == ADAPTOR + BACKBONE  # noise gate too
    finetune = build("transductive_ft", dataset, MAX_ITEM_LIST_LENGTH=50, hidden_size=300, inner_size=256)
    assert trainable(finetune) == ADAPTOR + BACKBONE + 20 * 300
    finetune.freeze_backbone()
    assert trainable(finetune) == ADAPTOR + 2 * 300 + 20 * 300  # adaptor, input LayerNorm, IDs


# ---- item encoder --------------------------------------------------------------------------------
def test_whitening_subtracts_a_learned_bias_after_the_dropout():
    """Shifting the features and the learned bias together changes nothing, and features equal to the bias
    map to 0. As in the reference's code the dropout acts on the features only: a zero feature vector gives
    exactly -b W in training, whatever the dropout draws."""
    torch.manual_seed(0)
    moe = MoEAdaptor(8, 12, 4, dropout=0.3, expert="whitening").eval()
    with torch.no_grad():
        moe.bias.normal_()
    x, shift = torch.randn(5, 12), torch.randn(12)
    before = moe(x)
    with torch.no_grad():
        moe.bias += shift
    assert torch.allclose(moe(x + shift), before, atol=1e-5)  # gates are uniform at init: W_gate = 0
    centre = moe.bias[0].detach().clone()
    with torch.no_grad():
        moe.bias.copy_(centre.expand(8, -1))
    assert torch.allclose(moe(centre), torch.zeros(4), atol=1e-6)
    moe.train()
    shifted = torch.stack([-linear(bias) for linear, bias in zip(moe.experts, moe.bias)]).mean(0)
    assert all(torch.allclose(moe(torch.zeros(12)), shifted, atol=1e-6) for _ in range(3))


def test_gates_start_uniform_and_are_noisy_only_in_training():
    model = build("inductive_ft", adaptor_dropout_prob=0.0)
    moe = model.moe_adaptor
    features = model.text_features[1:]
    moe.eval()
    assert torch.allclose(moe.gates(features), torch.full((11, 8), 1 / 8))
    whitened = torch.stack([linear(features - bias) for linear, bias in zip(moe.experts, moe.bias)])
    assert torch.allclose(moe(features), whitened.mean(0), atol=1e-6)
    moe.train()
    noisy = moe.gates(features)
    assert not torch.allclose(noisy, torch.full((11, 8), 1 / 8)) and not torch.equal(noisy, moe.gates(features))
    assert moe.noise_gate is not None and build("inductive_ft", adaptor_noise=False).moe_adaptor.noise_gate is None


# ---- pre-training ----------------------------------------------------------------------------------
def test_pretraining_terms_are_finite_and_train_the_adaptor():
    model = build("pretrain")
    loss = model.calculate_loss(pretrain_batch(model))
    assert set(loss) == {"seq_item", "seq_seq"} and all(torch.isfinite(term) and term > 0 for term in loss.values())
    assert model.item_embedding is None and model.seq_seq_weight == pytest.approx(1e-3)
    before = {name: p.detach().clone() for name, p in model.moe_adaptor.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sum(loss.values()).backward()
    optimizer.step()
    assert all(not torch.equal(before[name], p) for name, p in model.moe_adaptor.named_parameters())
    with pytest.raises(KeyError, match="prepare_batch"):
        model.calculate_loss(batch())


def manual_terms(model, interaction, duplicate_logit):
    """The two InfoNCE terms written out: row i's positive is column i; a column with row i's own target
    item gets ``duplicate_logit`` (0: zero_logit, -inf: exclude)."""
    target = interaction["item_id"]
    seq = model.forward(SEQ, LEN)
    view = model.encode(interaction[VIEW_SEQ], interaction[VIEW_SEQ_LEN],
                        model.item_tokens(interaction[VIEW_SEQ], interaction[VIEW_WORD_DROP]))
    items = F.normalize(model.item_tokens(target), dim=-1)
    same = (target[:, None] == target[None, :]) & ~torch.eye(3, dtype=torch.bool)

    def infonce(candidates):
        logits = (seq @ candidates.T / model.temperature).masked_fill(same, duplicate_logit)
        return F.cross_entropy(logits, torch.arange(3))

    return infonce(items), model.seq_seq_weight * infonce(view)


@pytest.mark.parametrize("mode, duplicate_logit", [("zero_logit", 0.0), ("exclude", float("-inf"))])
def test_duplicate_targets_are_zeroed_or_excluded(mode, duplicate_logit):
    """Rows 0 and 2 share their target item: each is a false negative of the other, in both terms."""
    model = build("pretrain", dup_mask=mode, **QUIET).eval()
    interaction = pretrain_batch(model, target=(4, 9, 4))
    loss = model.calculate_loss(interaction)
    seq_item, seq_seq = manual_terms(model, interaction, duplicate_logit)
    assert loss["seq_item"].item() == pytest.approx(seq_item.item(), rel=1e-5)
    assert loss["seq_seq"].item() == pytest.approx(seq_seq.item(), rel=1e-5)
    other = build("pretrain", dup_mask="none", **QUIET).eval()
    assert other.calculate_loss(interaction)["seq_item"].item() != pytest.approx(loss["seq_item"].item())


def test_item_drop_view_keeps_the_order_and_the_first_item():
    seq = torch.randint(1, 50, (300, 8))
    length = torch.randint(1, 9, (300,))
    seq[torch.arange(8) >= length[:, None]] = 0
    view_seq, view_len, word_drop = draw_view(seq, length, 0.5, 1.0, True, "delete", torch.Generator().manual_seed(0))
    assert not word_drop.any() and (view_len < length).any() and (view_seq[:, 0] == seq[:, 0]).all()
    assert view_seq.shape[1] == int(view_len.max())  # trimmed to the view's longest
    for row in range(40):
        kept = view_seq[row, : view_len[row]].tolist()
        rest = iter(seq[row, : length[row]].tolist())
        assert all(item in rest for item in kept) and not view_seq[row, view_len[row]:].any()


def test_word_drop_view_switches_only_the_flagged_positions_to_the_word_dropped_text():
    view_seq, view_len, word_drop = draw_view(SEQ, LEN, 0.5, 0.0, True, "delete", torch.Generator().manual_seed(1))
    assert torch.equal(view_seq, SEQ[:, :5]) and torch.equal(view_len, LEN)
    assert word_drop.any() and not (word_drop & (view_seq == 0)).any()
    model = build("pretrain", **QUIET).eval()
    plain, dropped = model.item_tokens(view_seq), model.item_tokens(view_seq, word_drop)
    assert torch.equal(dropped[~word_drop], plain[~word_drop])
    expected = model.moe_adaptor(model.text_aug_features[view_seq[word_drop]])
    assert torch.allclose(dropped[word_drop], expected, atol=1e-6) and not torch.allclose(expected, plain[word_drop])


def test_the_kind_of_view_is_drawn_per_batch_or_per_sequence():
    seq = torch.randint(1, 50, (400, 8))
    length = torch.full((400,), 8)
    for per_sequence in (False, True):
        kinds = set()
        for seed in range(6):
            _, view_len, word_drop = draw_view(seq, length, 0.3, 0.5, per_sequence, "delete",
                                               torch.Generator().manual_seed(seed))
            item_dropped, word_dropped = view_len < length, word_drop.any(dim=1)
            assert not (item_dropped & word_dropped).any()
            kinds.add((bool(item_dropped.any()), bool(word_dropped.any())))
        assert ((True, True) in kinds) == per_sequence  # one kind per batch, or both kinds in one batch


# ---- fine-tuning -----------------------------------------------------------------------------------
def test_transductive_items_add_their_ids_on_both_sides():
    model = build("transductive_ft", **QUIET).eval()
    items = torch.arange(12)
    tokens = model.item_tokens(items)
    candidates = F.normalize(tokens + model.item_embedding.weight, dim=-1)
    scores = model.full_sort_predict(batch())
    assert torch.allclose(scores[:, 1:], (model.forward(SEQ, LEN) @ candidates.T)[:, 1:], atol=1e-6)
    assert (scores[:, 0] == float("-inf")).all()
    before = model.forward(SEQ, LEN)
    with torch.no_grad():
        model.item_embedding.weight[2] += torch.randn(16)  # item 2 is in the first history only
    after = model.forward(SEQ, LEN)
    assert not torch.allclose(after[0], before[0]) and torch.allclose(after[1:], before[1:])
    paired = model.predict(batch() | {"item_id": torch.tensor([4, 9, 11])})
    assert torch.allclose(paired, model.full_scores(batch())[[0, 1, 2], [4, 9, 11]], atol=1e-6)
    expected = F.cross_entropy(model.full_scores(batch())[:, 1:] / model.temperature, torch.tensor([3, 8, 3]))
    assert model.calculate_loss(batch()).item() == pytest.approx(expected.item(), rel=1e-5)


def test_inductive_model_scores_an_unseen_item_by_its_features():
    dataset = text_dataset()
    dataset.item_features["text"].table[11] = dataset.item_features["text"].table[4]  # a "new" item like item 4
    model = build("inductive_ft", dataset, **QUIET).eval()
    assert model.item_embedding is None
    scores = model.full_sort_predict(batch())
    assert torch.allclose(scores[:, 11], scores[:, 4]) and not torch.allclose(scores[:, 10], scores[:, 4])


def test_history_bias_offsets_the_cosines_of_history_items_in_both_scoring_paths():
    """The bias is in cosine units here (UniSRec's scores are cosines); pre-training builds none."""
    plain, biased = build("inductive_ft", **QUIET).eval(), build("inductive_ft", history_bias=True, **QUIET).eval()
    with torch.no_grad():
        biased.history_bias.bias.fill_(-0.4)
    check_history_offset(plain, biased, batch, -0.4, targets=(2, 9, 3))  # rows 0 and 2: in the history
    assert build("pretrain", history_bias=True).history_bias is None


def test_freeze_backbone_freezes_exactly_the_position_table_and_the_transformer():
    model = build("transductive_ft")
    model.freeze_backbone()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    expected = {name for name, _ in model.named_parameters() if name.startswith(("position_embedding", "trm_encoder"))}
    assert frozen == expected and len(expected) > 10
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == {
        "moe_adaptor", "LayerNorm", "item_embedding"}


def test_transfer_skips_the_id_table_and_other_dimensions_fail_clearly():
    source = build("pretrain", seed=1)
    target = build("transductive_ft", text_dataset(n_items=15, seed=2), seed=2)
    report = target.load_pretrained(source.state_dict())
    assert report["loaded"] == sorted(source.state_dict()) and report["new"] == ["item_embedding.weight"]
    assert all(torch.equal(target.state_dict()[name], value) for name, value in source.state_dict().items())
    assert not any("features" in name for name in source.state_dict())  # feature tables are never saved
    back = build("inductive_ft").load_pretrained(target.state_dict())
    assert back["domain_specific"] == ["item_embedding.weight"] and back["new"] == []
    with pytest.raises(ValueError, match=r"other dimensions \(hidden_size.*plm_size"):
        build(hidden_size=8, inner_size=16).load_pretrained(source.state_dict())


def test_unknown_options_and_missing_tables_are_refused():
    with pytest.raises(ValueError, match="dup_mask='drop' is not supported by UniSRec"):
        build("pretrain", dup_mask="drop")
    with pytest.raises(ValueError, match="plm_suffix_aug"):
        build("pretrain", fake_dataset(dims=(10,), missing_rows=()))
    with pytest.raises(ValueError, match="modal_type to text"):
        build("inductive_ft", types.SimpleNamespace(num=lambda field: 12, item_features={}))


# ---- every stage end to end ------------------------------------------------------------------------
def test_pretraining_then_finetuning_both_modes_from_its_checkpoint(tmp_path):
    """Fixed-epoch pre-training on a merged text-only set, then parameter-efficient fine-tuning on another
    dataset (text + images: the images are not loaded) in both modes, with the load report."""
    write_pretrain_dataset(tmp_path)
    pretrained = run_recbole_missrec("UniSRec", "pt", config_dict=tiny_pretrain_config(tmp_path, epochs=1))
    assert os.path.basename(pretrained["checkpoint"]) == "UniSRec-pt-pretrain-1.pth"
    assert pretrained["history"][0]["loss_names"] == ["seq_item", "seq_seq"]
    state = load_state(pretrained["checkpoint"])["state_dict"]
    assert "item_embedding.weight" not in state and "moe_adaptor.noise_gate" in state

    write_benchmark_dataset(tmp_path)
    config = tiny_run_config(tmp_path, epochs=1, topk=[5, 10])
    assert PluginConfig(model="UniSRec", dataset="toy", config_dict=config)["modal_type"] == "text"
    adaptor = sum(value.numel() for name, value in state.items() if name.startswith("moe_adaptor"))
    for stage, ids in (("inductive_ft", 0), ("transductive_ft", 31 * 32)):  # 30 items + padding
        result = run_recbole_missrec("UniSRec", "toy", config_dict=dict(config, train_stage=stage),
                                     pretrained=pretrained["checkpoint"])
        report = result["transfer"]
        assert report["loaded"] == sorted(state) and report["new"] == (["item_embedding.weight"] if ids else [])
        assert result["trainable_params"] == adaptor + 2 * 32 + ids  # frozen backbone (freeze_backbone: True)
        tuned = load_state(result["checkpoint"])["state_dict"]
        assert all(torch.equal(tuned[name], state[name]) == name.startswith(("position_embedding", "trm_encoder"))
                   for name in state)  # the backbone kept its pre-trained values, everything else trained
        assert "ndcg@10" in result["test_result"] and not any("img" in name for name in tuned)


def one_pretraining_step(recompute_tokens):
    model = build("pretrain", hidden_dropout_prob=0.3, recompute_tokens=recompute_tokens).train()
    interaction = pretrain_batch(model)
    torch.manual_seed(7)  # the dropout masks
    loss = sum(model.calculate_loss(interaction).values())
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_recomputed_transformer_activations_give_the_same_loss_and_gradients(monkeypatch):
    """Pre-training's long batches recompute the Transformer in backward (the shared ``run_or_recompute``):
    the sequence and its view both go through it, with dropout on, and nothing may change."""
    from recbole_missrec.model.layers import checkpoint as real_checkpoint
    from recbole_missrec.model import layers

    calls = []
    monkeypatch.setattr(layers, "checkpoint", lambda *args, **kwargs: calls.append(1) or real_checkpoint(*args, **kwargs))
    plain_loss, plain = one_pretraining_step(0)
    assert not calls
    recomputed_loss, recomputed = one_pretraining_step(1)  # every batch is above a budget of 1 token
    assert len(calls) == 2  # the sequences and their views
    assert torch.equal(plain_loss, recomputed_loss) and plain.keys() == recomputed.keys()
    assert any(name.startswith("trm_encoder") for name in plain)
    assert all(torch.equal(plain[name], recomputed[name]) for name in plain)
