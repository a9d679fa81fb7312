"""MSM4SR (alias MP4SR): the parity checks of msm4sr-reference.md §12 that apply, the reference switches,
missing modalities, and every stage end to end."""
import math
import os
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import (
    ModelConfig, check_history_offset, fake_dataset, plugin_defaults, reevaluated_test_result, tiny_run_config,
    write_benchmark_dataset,
)
from recbole_missrec.config import PluginConfig
from recbole_missrec.data.feature_file import write_multi_vector_file
from recbole_missrec.data.feature_store import FeatureStore
from recbole_missrec.model import MSM4SR
from recbole_missrec.model.msm4sr.augment import AUG_KEEP, AUG_MIX
from recbole_missrec.model.msm4sr.item_encoder import AttentionPooling
from recbole_missrec.model.msm4sr.losses import cmcl
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.serving.recommender import store_rows
from recbole_missrec.trainer import load_state

REFERENCE = dict(pool_trainable=False, pool_mask_pad=False, mask_missing_modality=False)  # model switches
REFERENCE_PRETRAIN = dict(dup_mask="zero_logit", cmcl_symmetric=False, item_drop_mode="reference")
SEQ = torch.tensor([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 0], [3, 0, 0, 0, 0, 0]])
LEN = torch.tensor([3, 5, 1])


def msm4sr_config(stage="finetune", **overrides):
    """MSM4SR's yaml defaults for ``stage`` with the fields a model reads from RecBole's Config."""
    config = ModelConfig(plugin_defaults("MSM4SR", MSM4SR.STAGES[stage]))
    config.update(
        USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", LIST_SUFFIX="_list", ITEM_LIST_LENGTH_FIELD="item_length",
        NEG_PREFIX="neg_", MAX_ITEM_LIST_LENGTH=6, device="cpu", train_stage=stage, hidden_size=16, inner_size=32,
    )
    config.update(overrides)
    return config


def multi_vector_store(n_items, slots, dim, generator, missing=()):
    """Items with 1..slots vectors each (zeros after them); ``missing`` items and the padding row have none."""
    counts = torch.randint(1, slots + 1, (n_items,), generator=generator)
    counts[0] = 0
    counts[list(missing)] = 0
    mask = torch.arange(slots) < counts.unsqueeze(1)  # [N, S]
    table = torch.randn(n_items, slots, dim, generator=generator) * mask.unsqueeze(-1)
    return FeatureStore(table, mask, mask.any(dim=1))


def multi_vector_dataset(n_items=12, slots=(4, 3), dims=(10, 6), no_image=(), seed=0):
    generator = torch.Generator().manual_seed(seed)
    stores = {"text": multi_vector_store(n_items, slots[0], dims[0], generator),
              "img": multi_vector_store(n_items, slots[1], dims[1], generator, no_image)}
    return types.SimpleNamespace(num=lambda field: n_items, item_features=stores)


def build(stage="finetune", dataset=None, seed=0, **overrides):
    torch.manual_seed(seed)
    return MSM4SR(msm4sr_config(stage, **overrides), dataset or multi_vector_dataset())


def batch(target=(4, 9, 4), seq=SEQ, length=LEN):
    return {"item_id_list": seq, "item_length": length, "item_id": torch.tensor(target)}


def pretrain_batch(model, target=(4, 9, 4), seed=0):
    return model.prepare_batch(batch(target), torch.Generator().manual_seed(seed))


def total(loss):
    return sum(loss.values()) if isinstance(loss, dict) else loss


# ---- §12 (a): parameter counts ---------------------------------------------------------------------
def test_parameter_counts_match_the_reference():
    """Reference profile at 768-d features: 905,088 weights receive gradients. The reference counts 1,015,938
    with requires_grad: + 2 x 49,281 pooling weights that never train (here frozen, requires_grad=False)
    + 2 x 6,144 MoE noise matrices it never uses (not built here). Trained pooling adds the 98,562 back."""
    dataset = multi_vector_dataset(n_items=20, slots=(4, 3), dims=(768, 768))
    lengths = torch.tensor([50, 3, 4, 5, 1, 2])
    sequences = torch.randint(1, 20, (6, 50)) * (torch.arange(50) < lengths.unsqueeze(1))
    for pool_trainable, expected in ((False, 905_088), (True, 905_088 + 2 * 49_281)):
        model = build("pretrain", dataset, MAX_ITEM_LIST_LENGTH=50, hidden_size=64, inner_size=256,
                      pool_trainable=pool_trainable)
        interaction = model.prepare_batch(batch((3, 4, 5, 6, 7, 8), sequences, lengths), torch.Generator())
        total(model.calculate_loss(interaction)).backward()
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
        assert sum(p.numel() for p in model.parameters() if p.grad is not None) == expected
    finetune = build("finetune", dataset, MAX_ITEM_LIST_LENGTH=50, hidden_size=64, inner_size=256, **REFERENCE)
    assert sum(p.numel() for p in finetune.parameters() if p.requires_grad) == 905_088 + 64 * 20


# ---- §12 (b), (c): pooling ---------------------------------------------------------------------------
@pytest.mark.parametrize("trainable", [False, True])
def test_pooling_is_frozen_in_the_reference_and_trains_by_default(trainable):
    model = build("pretrain", pool_trainable=trainable, hidden_dropout_prob=0.0)
    pooling = model.item_encoders["text"].pooling
    before = [p.detach().clone() for p in pooling.parameters()]
    cached = model.item_encoders["text"].pooled(torch.arange(12)).detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    total(model.calculate_loss(pretrain_batch(model))).backward()
    optimizer.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, pooling.parameters())]
    assert all(changed) if trainable else not any(changed)
    if not trainable:  # the reference's frozen copy: the same pooled features at every step
        assert torch.equal(model.item_encoders["text"].pooled(torch.arange(12)), cached)


def test_padded_slots_dilute_the_reference_pooling():
    """§12 (c): one real vector and 9 zero slots pool to alpha * x, alpha = 1 / (1 + 9 e^(c - e1))."""
    torch.manual_seed(0)
    x = torch.randn(8)
    vectors = torch.cat([x.unsqueeze(0), torch.zeros(9, 8)])  # [S=10, D]
    mask = torch.tensor([True] + [False] * 9)
    pooling = AttentionPooling(8, 4, act="none", mask_pad=False)
    e1, c = pooling.score(x).item(), pooling.score(torch.zeros(8)).item()
    alpha = 1 / (1 + 9 * math.exp(c - e1))
    assert torch.allclose(pooling(vectors, mask), alpha * x, atol=1e-6) and alpha < 0.5
    pooling.mask_pad = True
    assert torch.allclose(pooling(vectors, mask), x, atol=1e-6)


def test_one_vector_per_item_needs_no_pooling():
    """Raw one-vector files (MSM4SR-CLIP): the softmax weight would be exactly 1, so nothing is pooled."""
    model = build(dataset=fake_dataset())
    encoder = model.item_encoders["text"]
    assert encoder.pooling is None and not any("pooling" in name for name, _ in model.named_parameters())
    assert torch.equal(encoder.pooled(torch.tensor([2, 5])), fake_dataset().item_features["text"].table[[2, 5], 0])


def test_pooling_of_an_item_without_vectors_is_zero():
    pooling = AttentionPooling(8, 4)
    out = pooling(torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 8))


# ---- §12 (d), (e): augmentations ----------------------------------------------------------------------
def test_reference_item_drop_keeps_the_item_before_each_kept_one():
    """§12 (d) through the model: the loss of the reference-dropped batch is the loss of the sequences the
    scatter rule leaves ([12, 13, 14] and [21, 23])."""
    dataset = multi_vector_dataset(n_items=30)
    model = build("pretrain", dataset, hidden_dropout_prob=0.0, adaptor_dropout_prob=0.0, item_drop_mode="reference",
                  mixup=False).eval()
    seq = torch.tensor([[11, 12, 13, 14, 0, 0], [21, 22, 23, 0, 0, 0]])
    keep = torch.tensor([[True, False, True, True, False, False], [True, True, False, False, False, False]])
    dropped = batch((5, 6), seq, torch.tensor([4, 3])) | {AUG_KEEP: keep}
    expected_seq = torch.tensor([[12, 13, 14, 0, 0, 0], [21, 23, 0, 0, 0, 0]])
    survivors = batch((5, 6), expected_seq, torch.tensor([3, 2])) | {AUG_KEEP: torch.ones(2, 6, dtype=torch.bool)}
    assert torch.allclose(total(model.calculate_loss(dropped)), total(model.calculate_loss(survivors)))


def test_mixup_swaps_the_same_positions_in_both_sequences_and_never_pads():
    """§12 (e): with item drop off, the image and text tokens trade places exactly where the mixup draw says,
    and never at padding."""
    model = build("pretrain", hidden_dropout_prob=0.0, adaptor_dropout_prob=0.0, item_drop_max=0.0, mixup_max=1.0,
                  augment_rates="sequence").eval()
    seen = {}
    encode = model.encode

    def spy(item_seq, item_seq_len, tokens):
        seen["tokens"] = tokens
        return encode(item_seq, item_seq_len, tokens)

    model.encode = spy
    interaction = pretrain_batch(model, seed=3)
    model.calculate_loss(interaction)
    plain = model.sequence_tokens(model.item_tokens(SEQ[:, :5]), SEQ[:, :5])  # [B, L, 2, d]
    swapped = interaction[AUG_MIX][:, :5] & (SEQ[:, :5] > 0)
    assert swapped.any() and (~swapped & (SEQ[:, :5] > 0)).any()
    mixed = seen["tokens"]
    # close, not bit-equal: the batch is encoded in other matrix shapes than `plain`, and some CPUs' kernels
    # round such shapes differently (seen on a Xeon: 6e-8); a wrong swap differs by the tokens' size (mean |x| 0.28)
    torch.testing.assert_close(mixed[swapped], plain[swapped].flip(-2), rtol=1e-5, atol=1e-6)  # text <-> image
    torch.testing.assert_close(mixed[~swapped], plain[~swapped], rtol=1e-5, atol=1e-6)  # padding: never swapped
    assert interaction[AUG_MIX][SEQ == 0].any()  # drawn there too, but masked by the model


def test_augmentation_draws_follow_the_generator_and_are_needed():
    model = build("pretrain")
    first, again = pretrain_batch(model, seed=5), pretrain_batch(model, seed=5)
    assert torch.equal(first[AUG_KEEP], again[AUG_KEEP]) and torch.equal(first[AUG_MIX], again[AUG_MIX])
    with pytest.raises(KeyError, match="prepare_batch"):
        model.calculate_loss(batch())
    assert AUG_KEEP not in build("finetune").prepare_batch(batch(), torch.Generator())


# ---- §12 (f), (g): losses --------------------------------------------------------------------------
def reference_cmcl(a, b, targets, temperature, symmetric, duplicate_term):
    """§4.2 written out: E_D(x) = exp(x / tau), or ``duplicate_term(x)`` for a pair with the same target."""
    def e(x, i, j):
        return duplicate_term(x) if (targets[i] == targets[j] and i != j) else math.exp(x / temperature)

    def loss(anchor, inter, intra):
        rows = []
        for i in range(len(targets)):
            positive = math.exp(float(a[i] @ b[i]) / temperature)
            denominator = sum(e(float(anchor[i] @ inter[j]), i, j) for j in range(len(targets)))
            denominator += sum(e(float(intra[i] @ intra[j]), i, j) for j in range(len(targets)) if j != i)
            rows.append(-math.log(positive / denominator))
        return sum(rows) / len(rows)

    second = loss(b, a, b) if symmetric else loss(a, b, b)
    return (loss(a, b, a) + second) / 2


def test_cmcl_matches_the_reference_formula_and_is_asymmetric_there():
    """§12 (f) on a hand-made 3 x 2 example: rows 0 and 1 share their target item."""
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    b = F.normalize(torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.6, -0.8]]), dim=-1)
    targets = [5, 5, 7]
    duplicates = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    tau = 0.5
    for symmetric in (False, True):
        zeroed = cmcl(a, b, a, b, tau, duplicates=duplicates, mode="zero_logit", symmetric=symmetric)
        assert zeroed.item() == pytest.approx(reference_cmcl(a, b, targets, tau, symmetric, lambda x: 1.0))
        excluded = cmcl(a, b, a, b, tau, duplicates=duplicates, mode="exclude", symmetric=symmetric)
        assert excluded.item() == pytest.approx(reference_cmcl(a, b, targets, tau, symmetric, lambda x: 0.0))
    asymmetric = cmcl(a, b, a, b, tau, symmetric=False)
    assert asymmetric.item() != pytest.approx(cmcl(a, b, a, b, tau, symmetric=True).item())
    assert cmcl(b, a, b, a, tau, symmetric=True).item() == pytest.approx(cmcl(a, b, a, b, tau, symmetric=True).item())


def test_pretraining_terms_of_a_single_sequence_are_zero():
    """§12 (g): with B = 1 every InfoNCE has only its positive: log 1 = 0."""
    model = build("pretrain")
    terms = model.pretrain_terms(F.normalize(torch.randn(1, 2, 16), dim=-1), F.normalize(torch.randn(1, 2, 16), dim=-1),
                                 torch.tensor([3]))
    assert set(terms) == {"nip_text", "nip_img", "cmcl"}
    assert all(term.item() == pytest.approx(0.0, abs=1e-6) for term in terms.values())


def test_pretraining_loss_terms_and_reference_profile():
    fixed = build("pretrain")
    loss = fixed.calculate_loss(pretrain_batch(fixed))
    assert set(loss) == {"nip_text", "nip_img", "cmcl"} and all(torch.isfinite(term) for term in loss.values())
    reference = build("pretrain", **REFERENCE, **REFERENCE_PRETRAIN)
    assert torch.isfinite(total(reference.calculate_loss(pretrain_batch(reference))))
    assert reference.cmcl_weight == pytest.approx(0.01) and reference.duplicates == "zero_logit"


# ---- §12 (h): scores -------------------------------------------------------------------------------
def test_finetune_score_is_the_sum_of_two_cosines_and_ranking_ignores_temperature():
    model = build("finetune").eval()
    items = torch.arange(12)
    tokens = model.item_tokens(items)  # [N, 2, d]
    candidates = F.normalize(tokens + model.item_embedding.weight.unsqueeze(1), dim=-1)
    sequences = model.forward(SEQ, LEN)  # [B, 2, d]
    expected = sequences[:, 0] @ candidates[:, 0].T + sequences[:, 1] @ candidates[:, 1].T
    scores = model.full_sort_predict(batch())
    assert torch.allclose(scores[:, 1:], expected[:, 1:], atol=1e-6) and (scores[:, 0] == float("-inf")).all()
    paired = model.predict(batch() | {"item_id": torch.tensor([4, 9, 11])})
    assert torch.allclose(paired, expected[[0, 1, 2], [4, 9, 11]])
    hotter = build("finetune", temperature=1.0).eval()
    assert torch.equal(hotter.full_sort_predict(batch()), scores)


def test_history_bias_offsets_history_items_by_its_cosine_units_times_the_modalities():
    """Scores are sums of two cosines, so a bias of -0.4 (cosine units) moves a history item by -0.8, in
    ``full_sort_predict`` and ``predict``; it trains with a frozen backbone; pre-training builds none."""
    plain, biased = build("inductive_ft").eval(), build("inductive_ft", history_bias=True).eval()
    with torch.no_grad():
        biased.history_bias.bias.fill_(-0.4)
    check_history_offset(plain, biased, batch, -0.8, targets=(2, 9, 3))  # rows 0 and 2: in the history
    biased.train().freeze_backbone()
    biased.calculate_loss(batch((2, 9, 3))).backward()
    assert biased.history_bias.bias.requires_grad and biased.history_bias.bias.grad.abs() > 0
    assert build("pretrain", history_bias=True).history_bias is None


def test_finetuning_cross_entropy_is_over_the_real_items_only():
    model = build("finetune").eval()
    expected = F.cross_entropy(model.full_scores(SEQ, LEN)[:, 1:] / model.temperature, torch.tensor([3, 8, 3]))
    assert model.calculate_loss(batch()).item() == pytest.approx(expected.item())


# ---- missing modalities and single-modality data -------------------------------------------------------
def test_an_item_without_image_is_scored_by_its_text_and_fills_the_image_sequence_with_it():
    model = build("inductive_ft", multi_vector_dataset(no_image=(3, 5))).eval()
    tokens = model.item_tokens(torch.arange(12))
    sequences = model.forward(SEQ, LEN)
    scores = model.full_sort_predict(batch())
    text_cos = sequences[:, 0] @ F.normalize(tokens[:, 0], dim=-1).T
    assert torch.allclose(scores[:, [3, 5]], 2 * text_cos[:, [3, 5]], atol=1e-6)  # mean over present x 2
    seq_tokens = model.sequence_tokens(model.item_tokens(SEQ), SEQ)
    assert torch.equal(seq_tokens[0, 2, 1], seq_tokens[0, 2, 0])  # item 3 in the image sequence: its text token
    assert not torch.equal(seq_tokens[0, 1, 1], seq_tokens[0, 1, 0])
    reference = build("inductive_ft", multi_vector_dataset(no_image=(3, 5)), mask_missing_modality=False).eval()
    zero_image = reference.item_encoders["img"].adaptor(torch.zeros(6))
    assert torch.allclose(reference.item_tokens(torch.tensor([3]))[0, 1], zero_image)  # the adaptor's constant


def test_a_target_without_image_has_no_image_prediction_term():
    model = build("pretrain", multi_vector_dataset(no_image=(4, 9)), mixup=False)
    loss = model.calculate_loss(pretrain_batch(model, target=(4, 9, 4)))
    assert loss["nip_img"].item() == 0 and loss["nip_text"].item() > 0 and torch.isfinite(loss["cmcl"])
    mixed = model.calculate_loss(pretrain_batch(model, target=(4, 9, 7)))
    assert mixed["nip_img"].item() == pytest.approx(0.0, abs=1e-6)  # one row left: log 1, items 4 and 9 no negatives


def test_text_only_data_runs_one_sequence_with_next_item_prediction_only():
    dataset = fake_dataset(dims=(10,), missing_rows=())
    model = build("pretrain", dataset)
    assert model.modalities == ["text"] and not model.mixup
    assert set(model.calculate_loss(pretrain_batch(model))) == {"nip_text"}
    finetune = build("finetune", dataset).eval()
    assert finetune.full_sort_predict(batch()).shape == (3, 12)


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="dup_mask='drop' is not supported by MSM4SR"):
        build("pretrain", dup_mask="drop")
    with pytest.raises(ValueError, match="pool_act"):
        build(pool_act="tanh")


# ---- §12 (i): transfer -----------------------------------------------------------------------------
def test_loading_a_pretraining_checkpoint_transfers_exactly():
    source = build("pretrain", seed=1, **REFERENCE)
    target = build("finetune", multi_vector_dataset(n_items=15, seed=2), seed=2, **REFERENCE)
    report = target.load_pretrained(source.state_dict())
    assert report["loaded"] == sorted(source.state_dict()) and report["unused"] == [] == report["domain_specific"]
    assert report["new"] == ["item_embedding.weight"]
    prefixes = {name.split(".")[0] for name in report["loaded"]}
    assert prefixes == {"position_embedding", "trm_encoder", "LayerNorm", "item_encoders"}
    modules = {".".join(name.split(".")[1:3]) for name in report["loaded"] if name.startswith("item_encoders")}
    assert modules == {"text.pooling", "text.adaptor", "img.pooling", "img.adaptor"}
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    encoder = target.item_encoders["text"]  # the frozen pooling's cache follows the loaded weights
    assert torch.allclose(encoder.pooled_table, encoder.pooling(encoder.features, encoder.slot_mask))


def test_a_finetuned_checkpoint_keeps_its_ids_and_other_dimensions_fail_clearly():
    finetuned = build("finetune", seed=1)
    report = build("inductive_ft").load_pretrained(finetuned.state_dict())
    assert report["domain_specific"] == ["item_embedding.weight"] and report["new"] == []
    with pytest.raises(ValueError, match=r"other dimensions \(hidden_size.*plm_size"):
        build(hidden_size=8, inner_size=16).load_pretrained(finetuned.state_dict())


def test_freeze_backbone_keeps_the_sequence_encoder():
    model = build("finetune")
    model.freeze_backbone()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(("position_embedding", "trm_encoder")) for name in frozen)


def test_inductive_model_scores_an_unseen_item_by_its_features():
    dataset = multi_vector_dataset()
    for store in dataset.item_features.values():  # item 11: a "new" item that looks exactly like item 4
        store.table[11], store.slot_mask[11], store.present[11] = store.table[4], store.slot_mask[4], store.present[4]
    scores = build("inductive_ft", dataset).eval().full_sort_predict(batch())
    assert torch.allclose(scores[:, 11], scores[:, 4])


def widened(dataset, new, n_items):
    """A dataset of the first ``n_items`` rows of ``dataset``'s stores after appending ``new`` (as a serving
    bundle holds them: the table as wide as its widest item)."""
    stores = {name: store_rows(store.extended(new[name].table, new[name].slot_mask), 0, n_items)
              for name, store in dataset.item_features.items()}
    return types.SimpleNamespace(num=lambda field: n_items, item_features=stores)


def six_text_vectors(seed=3):
    table = torch.randn(1, 6, 10, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(1, 6, dtype=torch.bool)
    return FeatureStore(table, mask, mask[:, 0])


@pytest.mark.parametrize("pool_trainable", [True, False])
def test_added_items_widen_the_pooled_tables_and_score_like_their_twins(pool_trainable):
    """Serving's add_items: a new item with an existing item's vectors scores like it (inductive); one with
    more vectors than any trained item widens the table without changing the trained items' scores; the
    model rebuilt from the widened table's trained rows (a bundle's) is the trained one."""
    dataset = multi_vector_dataset()  # text: at most 4 vectors per item
    model = build("inductive_ft", dataset, pool_trainable=pool_trainable).eval()
    query = model(SEQ, LEN)
    before = model.score(query, torch.arange(12))
    wide = six_text_vectors()
    new = {"text": store_rows(dataset.item_features["text"], 4, 5).extended(wide.table, wide.slot_mask),
           "img": store_rows(dataset.item_features["img"], 4, 6)}  # item 4's twin, then the wide item
    assert model.add_items(new).startswith("2 new items")
    assert model.n_items == 14 and model.item_encoders["text"].slot_mask.shape == (14, 6)
    after = model.score(query, torch.arange(14))
    assert torch.allclose(after[:, :12], before, atol=1e-6)
    assert torch.allclose(after[:, 12], before[:, 4], atol=1e-6)
    rebuilt = build("inductive_ft", widened(dataset, new, 12), pool_trainable=pool_trainable).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt.score(rebuilt(SEQ, LEN), torch.arange(12)), before, atol=1e-6)


def test_reference_pooling_keeps_new_items_at_the_trained_slot_count():
    """pool_mask_pad=False weighs padded slots: the table keeps its width, for the trained items' sake."""
    dataset = multi_vector_dataset()
    model = build("finetune", dataset, pool_mask_pad=False).eval()
    before = model.score(model(SEQ, LEN), torch.arange(12))
    new = {"text": six_text_vectors(), "img": store_rows(dataset.item_features["img"], 4, 5)}
    note = model.add_items(new)
    assert "1 kept only the first 4 text vectors" in note and "padding row" in note
    assert model.item_encoders["text"].slot_mask.shape == (13, 4)
    rebuilt = build("finetune", widened(dataset, new, 12), pool_mask_pad=False).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt.score(rebuilt(SEQ, LEN), torch.arange(12)), before, atol=1e-6)


def test_an_encoder_of_one_vector_per_item_averages_a_new_items_vectors():
    dataset = fake_dataset()  # one vector per item: no pooling layer
    model = build("inductive_ft", dataset).eval()
    text, image = (dataset.item_features[name].table[4, 0] for name in ("text", "img"))
    twin = {"text": FeatureStore(torch.stack([text + 1, text - 1]).unsqueeze(0), torch.ones(1, 2, dtype=torch.bool),
                                 torch.ones(1, dtype=torch.bool)),
            "img": FeatureStore(image.view(1, 1, -1), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, dtype=torch.bool))}
    model.add_items(twin)
    scores = model.score(model(SEQ, LEN), torch.tensor([4, 12]))
    assert torch.allclose(scores[:, 0], scores[:, 1], atol=1e-6)
    rebuilt = build("inductive_ft", widened(dataset, twin, 12))  # the bundle's text table is 2 slots wide now
    assert rebuilt.item_encoders["text"].pooling is None
    rebuilt.load_state_dict(model.state_dict())


# ---- every stage end to end ------------------------------------------------------------------------
def run(tmp_path, stage, folder="saved", model="MSM4SR", pretrained=None, **overrides):
    config = tiny_run_config(tmp_path, train_stage=stage, topk=[5, 10], checkpoint_dir=str(tmp_path / folder),
                             **overrides)
    return run_recbole_missrec(model, "toy", config_dict=config, pretrained=pretrained)


@pytest.fixture
def pretrained(tmp_path):
    """Pre-training selected on validation (the reference), on the toy text+image data (3 items lack images)."""
    write_benchmark_dataset(tmp_path)
    return run(tmp_path, "pretrain", folder="pretrain")


def test_pretraining_by_validation_then_finetuning_from_its_checkpoint(tmp_path, pretrained):
    assert [record["loss_names"] for record in pretrained["history"]] == [["nip_text", "nip_img", "cmcl"]] * 2
    assert all("valid_score" in record for record in pretrained["history"]) and "ndcg@10" in pretrained["test_result"]
    state = load_state(pretrained["checkpoint"])["state_dict"]
    assert "item_embedding.weight" not in state and not any("features" in name for name in state)

    result = run(tmp_path, "finetune", pretrained=pretrained["checkpoint"])
    report = result["transfer"]
    assert report["loaded"] == sorted(state) and report["new"] == ["item_embedding.weight"]
    assert result["trainable_params"] == result["total_params"]  # the reference trains everything
    assert dict(result["test_result"]) == reevaluated_test_result(result["checkpoint"])


def test_fixed_epoch_pretraining_and_the_mp4sr_alias(tmp_path):
    write_benchmark_dataset(tmp_path)
    fixed = run(tmp_path, "pretrain", pretrain_select="fixed_epochs", epochs=1, save_step=1)
    assert os.path.basename(fixed["checkpoint"]) == "MSM4SR-toy-pretrain-1.pth"
    assert fixed["history"][0]["loss_names"] == ["nip_text", "nip_img", "cmcl"]
    inductive = run(tmp_path, "inductive_ft", model="MP4SR", epochs=1, pretrained=fixed["checkpoint"])
    assert inductive["model"] == "MSM4SR" and inductive["transfer"]["new"] == []
    assert PluginConfig(model="MP4SR", dataset="toy", config_dict={"data_path": str(tmp_path)})["hidden_size"] == 64


def test_multi_vector_text_features_from_an_npz_file(tmp_path):
    """Several sentence vectors per item: pooled; the image stays one raw vector per item (no pooling)."""
    folder = write_benchmark_dataset(tmp_path)
    rng = np.random.default_rng(0)
    text = np.fromfile(os.path.join(folder, "toy.feat1CLS"), dtype=np.float32).reshape(30, 16)
    blocks = [text[item] + 0.1 * rng.standard_normal((1 + item % 4, 16)) for item in range(30)]
    write_multi_vector_file(os.path.join(folder, "toy.sent.npz"), [str(item) for item in range(30)], blocks)
    result = run(tmp_path, "finetune", epochs=1, plm_suffix="sent.npz")
    state = load_state(result["checkpoint"])["state_dict"]
    assert state["item_encoders.text.pooling.score.0.weight"].shape == (32, 16)
    assert not any(name.startswith("item_encoders.img.pooling") for name in state)
    assert dict(result["test_result"]) == reevaluated_test_result(result["checkpoint"])
