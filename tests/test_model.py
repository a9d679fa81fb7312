import pytest
import torch

from conftest import check_history_offset, fake_dataset, model_config
from recbole_missrec.data.feature_store import store_from_rows
from recbole_missrec.model import MISSRec
from recbole_missrec.model.layers import full_softmax_ce
from recbole_missrec.model.missrec.fusion import fuse_modalities, mix_id_score
from recbole_missrec.model.missrec.losses import diversity_penalty


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    dataset = fake_dataset(**overrides.pop("data", {}))
    model = MISSRec(model_config(**overrides), dataset)
    model.discover_interests(torch.Generator().manual_seed(0))
    return model.eval()


SEQ = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [9, 0, 0, 0, 0]])
LEN = torch.tensor([3, 5, 1])


def batch(target=(4, 9, 2)):
    return {"item_id_list": SEQ, "item_length": LEN, "item_id": torch.tensor(target)}


def test_encoder_decoder_shapes_and_masks():
    model = build()
    seq_output, memory, valid = model.encode(SEQ, LEN)
    assert seq_output.shape == (3, 16)
    assert torch.allclose(seq_output.norm(dim=1), torch.ones(3))
    assert memory.shape[:2] == valid.shape and memory.shape[2] == 16
    # interests of row 2 (one item) are that item's present modality tokens
    expected = set(model.interest_lookup[9].tolist()) - {0}
    assert valid[2].sum().item() == len(expected)
    tokens, padding = model._decoder_input(SEQ, model.item_present[SEQ])
    assert tokens.shape == (3, 5, 16) and torch.equal(padding, SEQ == 0)


def test_contextual_mode_has_one_token_per_modality_and_masks_missing_ones():
    model = build(seq_mm_fusion="stack")  # the reference yaml's name for contextual
    present = model.item_present[SEQ]
    tokens, padding = model._decoder_input(SEQ, present)
    assert tokens.shape == (3, 10, 16)
    # image block starts at column 5; items 3 and 5 have no image
    assert padding[1, 5 + 0].item() is False and padding[1, 5 + 1].item() is True  # items 4, 5
    assert padding[0, 5 + 2].item() is True and padding[0, 2].item() is False  # item 3: text kept
    assert model.full_sort_predict(batch()).shape == (3, 12)


def test_scores_cover_all_items_and_predict_agrees_with_full_sort():
    model = build()
    full = model.full_sort_predict(batch())
    paired = model.predict(batch())
    assert full.shape == (3, 12)
    assert torch.allclose(paired, full[torch.arange(3), torch.tensor([4, 9, 2])], atol=1e-5)


def test_history_bias_moves_only_history_items_in_every_scoring_path():
    """full_sort_predict and predict add the offset to the row's own history items; the serving protocol's
    history_offset says how much; a frozen backbone leaves it trainable."""
    plain, biased = build(), build(history_bias=True)
    with torch.no_grad():
        biased.history_bias.bias.fill_(-0.3)
    check_history_offset(plain, biased, batch, -0.3 / plain.temperature, targets=(2, 9, 2))  # row 0: 2 is seen
    biased.freeze_backbone()
    assert biased.history_bias.bias.requires_grad


def test_fusion_with_zero_factor_is_the_static_mean():
    cos = torch.randn(2, 4, 7)  # [M, B, C]
    present = torch.ones(2, 1, 7, dtype=torch.bool)
    assert torch.allclose(fuse_modalities(cos, present, torch.tensor(0.0)), cos.mean(0))
    assert torch.allclose(fuse_modalities(cos, present, None), cos.mean(0))
    sharp = fuse_modalities(cos, present, torch.tensor(50.0))
    assert torch.allclose(sharp, cos.max(0).values, atol=1e-2)  # f >> 0 favours the better modality
    factor = torch.tensor(1.7)
    expected = (torch.softmax(factor * cos, dim=0) * cos).sum(0)
    assert torch.allclose(fuse_modalities(cos, present, factor), expected, atol=1e-6)


def test_fusion_ignores_a_missing_modality():
    cos = torch.tensor([[[0.2, 0.4], [-0.3, 0.1]], [[0.9, -0.5], [0.6, 0.7]]])  # [M=2, B=2, C=2]
    present = torch.tensor([[[True, True]], [[False, True]]])  # [M, 1, C]: one row per item, every sequence
    for factor in (None, torch.tensor(0.0), torch.tensor(3.0)):
        fused = fuse_modalities(cos, present, factor)
        assert fused.shape == (2, 2)
        assert fused[:, 0].tolist() == pytest.approx([0.2, -0.3])  # only the text cosine counts, in every row
    assert fuse_modalities(cos, present, None)[:, 1].tolist() == pytest.approx([-0.05, 0.4])  # both, averaged


def test_fusion_of_one_modality_is_its_cosine():
    cos = torch.randn(1, 3, 5)  # [M=1, B, C]
    fused = fuse_modalities(cos, torch.ones(1, 1, 5, dtype=torch.bool))
    assert torch.equal(fused, cos[0])


def test_transductive_mix_is_id_plus_twice_modal_over_three():
    assert mix_id_score(torch.tensor(0.3), torch.tensor(0.6)).item() == pytest.approx((0.3 + 1.2) / 3)
    model = build()
    seq = model.forward(SEQ, LEN)
    items = torch.arange(12)
    ids = torch.nn.functional.normalize(model.item_embedding(items), dim=-1)
    embedding, model.item_embedding = model.item_embedding, None
    modal = model.score(seq, items)
    model.item_embedding = embedding
    expected = (seq @ ids.T + 2 * modal * model.temperature) / 3 / model.temperature
    assert torch.allclose(model.score(seq, items), expected, atol=1e-5)


def test_padding_item_is_never_a_training_class():
    logits = torch.randn(3, 6)
    target = torch.tensor([1, 5, 2])
    changed = logits.clone()
    changed[:, 0] = 1e4
    assert torch.allclose(full_softmax_ce(logits, target), full_softmax_ce(changed, target))
    assert torch.allclose(full_softmax_ce(logits, target), torch.nn.functional.cross_entropy(logits[:, 1:], target - 1))


def test_missing_modality_is_masked_by_default():
    model = build()
    assert model.item_present[3].tolist() == [True, False]
    assert model.interest_lookup[3, 1].item() == 0  # no interest token for the missing image
    tokens, _ = model._decoder_input(torch.tensor([[3]]), model.item_present[torch.tensor([[3]])])
    text_only = model.adapters["text"](model.text_features[3]) + model.item_embedding.weight[3]
    text_only = model.input_norm(text_only + model.position_embedding.weight[0])
    assert torch.allclose(tokens[0, 0], text_only, atol=1e-5)


def test_reference_behaviour_treats_missing_rows_as_bias_tokens():
    model = build(mask_missing_modality=False)
    assert model.item_present[1:].all()
    assert model.interest_lookup[3, 1].item() > 0
    assert model.n_interests == 11  # ceil(0.5 * 2 * 11 tokens)


def test_forward_before_interest_discovery_fails_clearly():
    torch.manual_seed(0)
    model = MISSRec(model_config(), fake_dataset())
    with pytest.raises(RuntimeError, match="discover_interests"):
        model.full_sort_predict(batch())


def test_sequence_without_any_interest_gives_no_nan():
    model = build()
    model.interest_lookup.zero_()
    assert torch.isfinite(model.full_sort_predict(batch())).all()


def test_parameter_counts_match_the_reference():
    config = model_config(hidden_size=300, inner_size=256, n_heads=4, MAX_ITEM_LIST_LENGTH=50, train_stage="inductive_ft")
    model = MISSRec(config, fake_dataset(n_items=20, dims=(512, 512)))
    assert sum(p.numel() for p in model.parameters()) == 1_719_513  # spec §3.1
    transductive = MISSRec(model_config(**{**config, "train_stage": "transductive_ft"}), fake_dataset(n_items=20, dims=(512, 512)))
    assert sum(p.numel() for p in transductive.parameters()) == 1_719_513 + 300 * 20


def test_feature_tables_are_not_saved_but_interests_are():
    state = build().state_dict()
    assert "text_features" not in state and "item_present" not in state
    assert {"interest_centroids", "interest_lookup", "interests_ready"} <= set(state)


def test_diversity_penalty_masked_mean_and_reference():
    memory = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    valid = torch.tensor([[True, True, False]])
    # masked mean of the two real rows = (2, 3): (4 + 9) / 2 dims
    assert diversity_penalty(memory, valid).item() == pytest.approx(13 / 2)
    # reference: (2 valid / 3) * sum of all rows (13, 15) -> ((26/3)^2 + 10^2) / 2
    assert diversity_penalty(memory, valid, reference=True).item() == pytest.approx(((26 / 3) ** 2 + 100) / 2)


def test_loss_is_finite_and_backpropagates_into_adapters():
    model = build().train()
    loss = model.calculate_loss(batch())
    loss.backward()
    assert torch.isfinite(loss)
    assert model.adapters["text"].weight.grad.abs().sum() > 0
    assert model.fusion_factor.grad is not None


def test_single_modality_model():
    model = build(data={"dims": (10,)}, train_stage="inductive_ft")
    assert model.fusion_factor is None and model.item_embedding is None
    assert model.full_sort_predict(batch()).shape == (3, 12)


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="seq_mm_fusion"):
        MISSRec(model_config(seq_mm_fusion="concat"), fake_dataset())
    with pytest.raises(ValueError, match="train_stage"):
        MISSRec(model_config(train_stage="pretrain_typo"), fake_dataset())
    with pytest.raises(ValueError, match="kmeans_method"):
        MISSRec(model_config(kmeans_method="fast"), fake_dataset())


def test_kmeans_method_reaches_interest_discovery(monkeypatch):
    from recbole_missrec.model.missrec import missrec

    seen = []

    def recording_kmeans(*args, method, **kwargs):
        seen.append(method)
        return kmeans(*args, method=method, **kwargs)

    kmeans = missrec.kmeans
    monkeypatch.setattr(missrec, "kmeans", recording_kmeans)
    approx = build(kmeans_method="approx")
    assert seen == ["approx"] and approx.interest_lookup[1:].max() > 0
    assert torch.equal(build(kmeans_method="auto").interest_lookup, build(kmeans_method="exact").interest_lookup)


def test_reference_kmeans_reaches_interest_discovery():
    model = build(interest_method="reference_kmeans")
    used = model.interest_lookup[model.interest_lookup > 0].unique()
    assert (model.interest_centroids >= 0).all() and used.numel() >= 1
    assert model.calculate_loss(batch()).isfinite()
    assert not (build().interest_centroids >= 0).all()  # the default k-means keeps signs


def test_no_interests_leaves_one_constant_memory_token_for_every_sequence():
    model = build(interest_method="none")
    assert model.n_interests == 0 and not model.interest_lookup.any() and bool(model.interests_ready)
    _, memory, valid = model.encode(SEQ, LEN)
    assert valid.shape == (3, 1) and valid.all()
    assert torch.allclose(memory, memory[:1].expand_as(memory))  # the same token, whatever the history
    assert model.calculate_loss(batch()).isfinite()
    assert build().encode(SEQ, LEN)[1].shape[1] > 1  # the default discovers several interests per sequence
    rows = torch.randn(2, 10).numpy(), torch.randn(2, 6).numpy()
    note = model.add_items({name: store_from_rows(table) for name, table in zip(("text", "img"), rows)})
    assert model.interest_lookup.shape[0] == 14 and not model.interest_lookup.any()
    assert "join no interest" in note and "saved interests" not in note
    assert model.full_sort_predict(batch()).shape == (3, 14)


def gradients_of_one_step(recompute_tokens):
    model = build(hidden_dropout_prob=0.3, recompute_tokens=recompute_tokens).train()
    torch.manual_seed(7)  # the dropout masks
    loss = model.calculate_loss(batch())
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_recomputed_activations_give_the_same_loss_and_gradients():
    plain_loss, plain = gradients_of_one_step(0)
    recomputed_loss, recomputed = gradients_of_one_step(1)  # every batch is above a budget of 1 token
    assert torch.equal(plain_loss, recomputed_loss)
    assert plain.keys() == recomputed.keys() and any("transformer.decoder" in name for name in plain)
    assert all(torch.equal(plain[name], recomputed[name]) for name in plain)


def test_recompute_budget_decides_which_batches_are_checkpointed(monkeypatch):
    from recbole_missrec.model import layers

    calls = []
    monkeypatch.setattr(layers, "checkpoint", lambda module, *args, **kwargs: calls.append(module) or module(
        *args, **{k: v for k, v in kwargs.items() if k != "use_reentrant"}))
    model = build(recompute_tokens=12).train()  # 3 rows x 5 positions = 15 decoder tokens > 12
    model.calculate_loss(batch())
    assert model.transformer.decoder in calls
    calls.clear()
    with torch.no_grad():
        model.calculate_loss(batch())  # nothing to recompute without gradients
    assert calls == []


def test_moe_adapter_trains_and_clusters_noise_free_tokens():
    """``adapter: moe`` scores items through UniSRec's adaptor; interests are discovered from its
    evaluation-mode tokens, so training mode (dropout, gate noise) does not move them."""
    model = build(adapter="moe", n_exps=3, adaptor_dropout_prob=0.5).train()
    assert model.adapters["text"].experts[0].weight.shape == (16, 10)
    eval_lookup = model.interest_lookup.clone()
    model.discover_interests(torch.Generator().manual_seed(0))
    assert torch.equal(model.interest_lookup, eval_lookup) and model.training and model.adapters["text"].training
    loss = model.calculate_loss(batch())
    loss.backward()
    assert torch.isfinite(loss) and model.adapters["text"].gate.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="adapter"):
        build(adapter="mlp")
