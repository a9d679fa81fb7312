"""The layers and losses several model families share (model/layers.py)."""
import pytest
import torch
import torch.nn.functional as F

from recbole_missrec.model.layers import (
    HistoryBias, MoEAdaptor, duplicate_mask, full_softmax_ce, history_hits, in_batch_infonce, item_drop,
    modality_presence, presence_weights,
)


def test_item_drop_delete_keeps_the_chosen_items_in_order():
    seq, length = torch.tensor([[1, 2, 3, 4, 0, 0]]), torch.tensor([4])
    out, out_len = item_drop(seq, length, torch.tensor([[True, False, True, False, True, True]]))
    assert out.tolist() == [[1, 3, 0, 0, 0, 0]] and out_len.tolist() == [2]  # the reference kept [2, 4]
    out, out_len = item_drop(seq, length, torch.zeros(1, 6, dtype=torch.bool))
    assert out.tolist() == [[4, 0, 0, 0, 0, 0]] and out_len.tolist() == [1]  # all dropped: the most recent stays


def test_item_drop_reference_reproduces_the_scatter_rule():
    # msm4sr-reference.md §12 (d): the items whose next position is kept survive, plus the last real one
    seq = torch.tensor([[11, 12, 13, 14, 0, 0], [21, 22, 23, 0, 0, 0]])
    keep = torch.tensor([[True, False, True, True, False, False], [True, True, False, False, False, False]])
    out, out_len = item_drop(seq, torch.tensor([4, 3]), keep, mode="reference")
    assert out.tolist() == [[12, 13, 14, 0, 0, 0], [21, 23, 0, 0, 0, 0]] and out_len.tolist() == [3, 2]
    with pytest.raises(ValueError, match="delete"):
        item_drop(seq, torch.tensor([4, 3]), keep, mode="scatter")


def test_infonce_duplicate_modes():
    logits = torch.randn(3, 5)
    plain = in_batch_infonce(logits, first=2)
    assert torch.allclose(plain, F.cross_entropy(logits, torch.tensor([2, 3, 4])))
    same = duplicate_mask(torch.tensor([7, 8, 7]), torch.tensor([1, 8, 7, 8, 7]), first=2)
    assert same.tolist() == [[False, False, False, False, True], [False, True, False, False, False],
                             [False, False, True, False, False]]  # own positives (2, 3, 4) are never marked
    excluded = in_batch_infonce(logits, 2, same, "exclude")
    zeroed = in_batch_infonce(logits, 2, same, "zero_logit")
    expected = F.cross_entropy(logits.masked_fill(same, float("-inf")), torch.tensor([2, 3, 4]))
    assert torch.allclose(excluded, expected)
    assert torch.allclose(zeroed, F.cross_entropy(logits.masked_fill(same, 0.0), torch.tensor([2, 3, 4])))
    assert torch.allclose(in_batch_infonce(logits, 2, same, "none"), plain)


def test_infonce_over_chosen_rows_only():
    logits = torch.randn(3, 3)
    rows = torch.tensor([True, False, True])
    expected = F.cross_entropy(logits[[0, 2]], torch.tensor([0, 2]), reduction="sum") / 3  # row 1 counts 0
    assert torch.allclose(in_batch_infonce(logits, rows=rows), expected)
    assert in_batch_infonce(logits, rows=torch.zeros(3, dtype=torch.bool)).item() == 0  # no row: no loss


def test_infonce_with_one_row_is_zero():
    assert in_batch_infonce(torch.tensor([[3.0]])).item() == pytest.approx(0.0)  # §12 (g): log 1


def test_full_softmax_never_makes_padding_a_class():
    logits = torch.tensor([[100.0, 1.0, 2.0]])
    assert full_softmax_ce(logits, torch.tensor([2])).item() == pytest.approx(F.cross_entropy(logits[:, 1:], torch.tensor([1])).item())


def test_history_hits_mark_each_rows_own_items_over_all_items_or_sorted_candidates():
    seq = torch.tensor([[3, 1, 3, 0], [2, 5, 0, 0], [0, 0, 0, 0]])
    brute = torch.tensor([[item in row[row > 0].tolist() for item in range(7)] for row in seq])
    assert torch.equal(history_hits(seq, 7), brute)
    candidates = torch.tensor([1, 2, 4, 6])  # 3 and 5 are in histories but not candidates
    assert torch.equal(history_hits(seq, candidates), brute[:, candidates])


def test_history_bias_offsets_only_history_items_and_learns_from_the_loss():
    """The offset is the bias in cosine units times the scale; the cross-entropy of a target outside the
    history always pushes the bias down (its gradient is the scale times the history items' softmax mass)."""
    layer = HistoryBias(scale=10.0)
    seq = torch.tensor([[2, 1, 0]])
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert torch.equal(layer(logits, seq), logits)  # starts at 0
    with torch.no_grad():
        layer.bias.fill_(-0.2)
    assert torch.allclose(layer(logits, seq), torch.tensor([[0.0, 1.0, -1.0, 2.0]]))
    candidates = torch.tensor([1, 3])  # a subset of the items, as serving scores them
    subset = logits[:, candidates] + history_hits(seq, candidates) * layer.offset()
    assert torch.allclose(subset, torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(layer.paired(torch.tensor([3.0]), seq, torch.tensor([1])), torch.tensor([1.0]))
    assert torch.allclose(layer.paired(torch.tensor([3.0]), seq, torch.tensor([3])), torch.tensor([3.0]))
    full_softmax_ce(layer(logits, seq), torch.tensor([3])).backward()
    assert layer.bias.grad > 0  # descent lowers the bias


def test_modality_presence_keeps_at_least_one_token():
    missing = torch.tensor([[False, True], [True, True], [False, False]])
    assert modality_presence(missing).tolist() == [[True, False], [True, True], [True, True]]
    assert modality_presence(missing, mask_missing=False).all()


def test_presence_weights_average_over_present_modalities():
    present = torch.tensor([[True, True], [False, True], [False, False]])
    assert presence_weights(present).tolist() == [[0.5, 0.5], [0.0, 1.0], [0.0, 0.0]]


@pytest.mark.parametrize("expert", ["linear_ln", "whitening"])
def test_moe_adaptor_starts_with_uniform_gates(expert):
    torch.manual_seed(0)
    moe = MoEAdaptor(8, 12, 4, dropout=0.0, expert=expert).eval()
    x = torch.randn(5, 12)
    experts = []
    for k in range(8):
        if expert == "linear_ln":
            experts.append(moe.norms[k](moe.experts[k](x)))
        else:
            experts.append(moe.experts[k](x - moe.bias[k]))
    assert torch.allclose(moe(x), torch.stack(experts).mean(0), atol=1e-6)
    assert moe(torch.randn(2, 3, 12)).shape == (2, 3, 4)


def whitening_by_expert(moe, x, kept):
    """UniSRec's formula, one expert at a time: sum_e g_e(x) (kept - b_e) W_e, ``kept`` the features after a
    dropout that kept them all (no gate noise)."""
    gates = torch.softmax(x @ moe.gate, dim=-1)  # [..., E]
    outputs = torch.stack([linear(kept - bias) for linear, bias in zip(moe.experts, moe.bias)], dim=-2)
    return (gates.unsqueeze(-1) * outputs).sum(-2)


@pytest.mark.parametrize("training", [False, True])
def test_moe_whitening_matches_the_per_expert_formula_and_its_gradients(training, monkeypatch):
    """The batched whitening (b_e W_e subtracted after the matmul) gives UniSRec's per-expert outputs and the
    same gradients for the gates, weights and biases, in evaluation (one shared matmul) and in training (the
    per-expert bmm), where a uniform draw of ones keeps every feature: dropout p = 0.5 then doubles x."""
    torch.manual_seed(0)
    moe = MoEAdaptor(3, 12, 4, dropout=0.5, expert="whitening").train(training)
    with torch.no_grad():
        moe.gate.normal_()
        moe.bias.normal_()
    x = torch.randn(2, 5, 12)
    monkeypatch.setattr(torch, "rand", lambda *shape, device=None: torch.ones(*shape, device=device))
    kept = 2 * x if training else x
    grads = []
    for forward in (lambda: moe(x), lambda: whitening_by_expert(moe, x, kept)):
        moe.zero_grad()
        out = forward()
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in moe.parameters()]))
    (ours, our_grads), (reference, reference_grads) = grads
    assert torch.allclose(ours, reference, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(our_grads, reference_grads))


def test_moe_whitening_draws_a_dropout_mask_per_expert():
    """Two identity experts on ones with uniform gates: independent masks (p = 0.5) give the mean of two
    draws, 0 / 1 / 2 with frequencies 1/4, 1/2, 1/4; a mask shared by the experts would never give 1."""
    torch.manual_seed(0)
    moe = MoEAdaptor(2, 4, 4, dropout=0.5, expert="whitening").train()
    with torch.no_grad():
        for linear in moe.experts:
            linear.weight.copy_(torch.eye(4))
    out = moe(torch.ones(2000, 4))
    frequencies = [(out == value).float().mean().item() for value in (0.0, 1.0, 2.0)]
    assert frequencies == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    assert moe.eval()(torch.ones(3, 4)).tolist() == [[1.0] * 4] * 3
