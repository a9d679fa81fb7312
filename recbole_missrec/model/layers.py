"""Layers and losses shared by the plugin's model families; each idea lives here once.

- ``full_softmax_ce``: fine-tuning cross-entropy over the real items (the padding item is never a class).
- ``in_batch_infonce`` and ``duplicate_mask``: contrast against in-batch candidates, with the three ways
  the references treat a "negative" that is in fact the row's own target item; ``local_rows``: the
  candidates of this process only (a model's ``gather_rows`` outside DDP).
- ``item_drop``: the pre-training augmentation of both references, as intended (``delete``) or as the
  reference code's scatter actually behaved (``reference``).
- ``modality_presence`` and ``presence_weights``: which item-modality tokens are real when a modality is
  missing, and the weights of a mean over the real ones.
- ``per_distinct``: per-item work done once per distinct item of a batch and read back per position.
- ``HistoryBias``: a learned score offset for the items of a row's own history.
- ``MoEAdaptor``: the mixture-of-experts feature adaptor of UniSRec (whitening experts, noisy gates) and MSM4SR.
- ``run_or_recompute``: a transformer part whose activations are recomputed in backward on the largest
  batches, which set a run's peak memory.
- ``normal_init`` and ``transfer_weights``: the references' weight initialisation, and loading a pre-trained
  state dict by name with a report of what was transferred.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

DUPLICATE_MODES = ("none", "zero_logit", "exclude")
ITEM_DROP_MODES = ("delete", "reference")
MOE_NOISE_FLOOR = 1e-2  # least std of the noisy gates' noise (UniSRec)


def full_softmax_ce(logits, target):
    """Cross-entropy over the real items only: column 0 is the padding item and never a class.

    logits: [B, N] over all item ids, target: [B] in 1..N-1.
    """
    return F.cross_entropy(logits[:, 1:], target - 1)


def duplicate_mask(targets, candidate_targets, first=0):
    """[B, C] bool: column c is another in-batch candidate with row b's own target item (a false negative).

    targets: [B] item ids of this rank's rows; candidate_targets: [C] item id of each column; row b's own
    positive is column ``first + b`` and is never marked.
    """
    same = targets.unsqueeze(1) == candidate_targets.unsqueeze(0)
    rows = torch.arange(targets.shape[0], device=targets.device)
    same[rows, rows + first] = False
    return same


def apply_duplicates(logits, duplicates, mode):
    """Treat the marked false negatives of ``logits`` [B, C] as ``mode`` says: ``none`` keeps them as
    negatives, ``zero_logit`` sets their logit to 0 (each adds exactly 1 to the denominator: UniSRec's and
    MSM4SR's reference code), ``exclude`` removes them."""
    if mode == "none" or duplicates is None:
        return logits
    if mode == "zero_logit":
        return logits.masked_fill(duplicates, 0.0)
    if mode == "exclude":
        return logits.masked_fill(duplicates, float("-inf"))
    raise ValueError(f"duplicate mode {mode!r} is not supported; use one of {DUPLICATE_MODES}")


def local_rows(x):
    """In-batch candidates of this process only: (rows, index of this process's first row). The default of
    a model's ``gather_rows`` attribute, which the trainer swaps for the cross-rank gather under DDP."""
    return x, 0


def in_batch_infonce(logits, first=0, duplicates=None, mode="none", rows=None):
    """InfoNCE with in-batch negatives: row i's positive is column ``first + i``.

    logits: [B, C] (already divided by the temperature); the columns are the candidates of the whole,
    possibly gathered, batch and ``first`` is where this rank's rows start among them. ``duplicates``:
    :func:`duplicate_mask`, handled per ``mode`` (see :func:`apply_duplicates`). ``rows`` [B] bool: the rows
    that have a loss (not a row whose positive is missing); the others count 0 in the mean over all B rows,
    so every row weighs the same whatever the batch or the data-parallel share it falls in.
    """
    labels = torch.arange(logits.shape[0], device=logits.device) + first
    logits = apply_duplicates(logits, duplicates, mode)
    if rows is None:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits[rows], labels[rows], reduction="sum") / logits.shape[0]


def compact(item_seq, survive):
    """The items where ``survive`` [B, L] is True, in their order, left-aligned and right-padded with 0.
    Returns (ids [B, L], lengths [B])."""
    order = torch.argsort((~survive).to(torch.int8), dim=1, stable=True)  # survivors first, in order
    return torch.gather(item_seq * survive, 1, order), survive.sum(dim=1)


def item_drop(item_seq, item_seq_len, keep, mode="delete"):
    """Drop the real items of ``item_seq`` [B, L] (right-padded) where ``keep`` [B, L] is False.

    ``delete``: the kept items survive, in order; a row that keeps nothing keeps its most recent item.
    ``reference``: the scatter of UniSRec's and MSM4SR's code (position j writes to slot cumsum(keep)-1,
    the later write wins, position 0 forced kept): the items whose *next* position is kept survive, plus
    the last real item. Returns (ids [B, L], lengths [B]).
    """
    positions = torch.arange(item_seq.shape[1], device=item_seq.device)
    real = positions < item_seq_len.unsqueeze(1)  # [B, L]
    if mode == "reference":
        keep = keep | ~real
        keep[:, 0] = True
        after = torch.cat([keep[:, 1:], torch.ones_like(keep[:, :1])], dim=1)
        return compact(item_seq, after & real)
    if mode != "delete":
        raise ValueError(f"item drop mode {mode!r} is not supported; use one of {ITEM_DROP_MODES}")
    survive = keep & real
    empty = ~survive.any(dim=1)
    survive[empty, (item_seq_len[empty] - 1).clamp_min(0)] = True
    return compact(item_seq, survive)


def modality_presence(missing, mask_missing=True):
    """[N, M] bool: which item-modality tokens count. ``missing`` [N, M] marks absent modalities; without
    masking every token counts (the references: a missing feature is a zero vector). An item with no
    modality keeps all of them, so every item has at least one token and nothing is fully masked."""
    present = ~missing if mask_missing else torch.ones_like(missing)
    present[~present.any(dim=1)] = True
    return present


def presence_weights(present, dtype=torch.float32, dim=-1):
    """Weights of a mean over the present modalities only (modalities along ``dim`` of ``present``, bool):
    1/count where present, 0 elsewhere (all 0 where none is)."""
    present = present.to(dtype)
    return present / present.sum(dim=dim, keepdim=True).clamp_min(1)


def per_distinct(ids, compute):
    """``compute`` on the distinct values of ``ids`` [U] -> [U, ...], read back per entry: [*ids.shape, ...].
    Why: item adapters and encoders run over a batch's items, where padding and repeated items would make
    the cost follow the B x L positions instead of the items a step really needs."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    return compute(unique)[inverse]


def history_hits(item_seq, candidates):
    """[B, C] bool: whether each of the sorted ids ``candidates`` [C] is in a row's history ``item_seq``
    [B, L] (0 = padding); an int N for ``candidates`` stands for every item id 0..N-1 (a full ranking)."""
    if isinstance(candidates, int):
        hits = torch.zeros(item_seq.shape[0], candidates, dtype=torch.bool, device=item_seq.device)
        hits.scatter_(1, item_seq, True)
        hits[:, 0] = False
        return hits
    position = torch.searchsorted(candidates, item_seq.contiguous()).clamp_max(len(candidates) - 1)  # [B, L]
    found = (candidates[position] == item_seq) & (item_seq > 0)
    hits = torch.zeros(item_seq.shape[0], len(candidates), dtype=torch.bool, device=item_seq.device)
    rows = torch.arange(item_seq.shape[0], device=item_seq.device).unsqueeze(1).expand_as(item_seq)
    hits[rows[found], position[found]] = True
    return hits


class HistoryBias(nn.Module):
    """One learned scalar, added to the score of every item of a row's own history (starts at 0).

    Why: a content model scores an item by the cosine of its features with a query built from the history,
    so the last history item, its own nearest neighbour, tops most rankings (``benchmarks/history_probe.py``:
    trained MISSRec runs rank it first in 69-90 % of Scientific's test rows), while a target repeats a
    history item in 0.6 % of them (toys: never). The scalar, learned from the training
    targets, lets the model push seen items down, or up where repeats are common; the evaluation is
    unchanged (every item stays ranked). RecBole's sequential models have no such term and its sequential
    evaluator does not mask seen items. ``scale`` maps the bias's units (the cosine's) to the logits'
    (1 / temperature), so Adam's steps move it by a useful amount."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.bias = nn.Parameter(torch.zeros(()))

    def offset(self):
        """The logit offset of a history item (0-d)."""
        return self.bias * self.scale

    def forward(self, logits, item_seq):
        """``logits`` [B, N] of every item plus the offset where the item is in the row's history
        ``item_seq`` [B, L]."""
        return logits + history_hits(item_seq, logits.shape[1]).to(logits.dtype) * self.offset()

    def paired(self, logits, item_seq, item_ids):
        """``logits`` [B] of one candidate per row ``item_ids`` [B] plus the offset where it is in the history."""
        hits = ((item_seq == item_ids.unsqueeze(1)) & (item_seq > 0)).any(1)
        return logits + hits.to(logits.dtype) * self.offset()


class MoEAdaptor(nn.Module):
    """Mixture of ``n_exps`` experts mapping item features [..., D] to [..., d], with dense softmax gates
    ``softmax(x W_g)`` (W_g starts at 0: uniform gates).

    expert ``linear_ln`` (MSM4SR): Linear -> Dropout -> LayerNorm. ``whitening`` (UniSRec's parametric
    whitening): Dropout(x) - b -> Linear without bias; the learned b centres the features and, as in UniSRec's
    code, the dropout acts on the features before it. ``noise`` (UniSRec): in training the gate logits get
    Gaussian noise of std softplus(x W_n) + 0.01, W_n learned from 0 (off: MSM4SR, and every evaluation).
    """

    def __init__(self, n_exps, in_dim, out_dim, dropout=0.2, expert="linear_ln", layer_norm_eps=1e-12, noise=False):
        super().__init__()
        if expert not in ("linear_ln", "whitening"):
            raise ValueError(f"MoE expert {expert!r} is not supported; use linear_ln or whitening")
        self.expert = expert
        self.gate = nn.Parameter(torch.zeros(in_dim, n_exps))
        self.noise_gate = nn.Parameter(torch.zeros(in_dim, n_exps)) if noise else None
        self.dropout = nn.Dropout(dropout)
        if expert == "linear_ln":
            self.experts = nn.ModuleList(nn.Linear(in_dim, out_dim) for _ in range(n_exps))
            self.norms = nn.ModuleList(nn.LayerNorm(out_dim, eps=layer_norm_eps) for _ in range(n_exps))
            for linear in self.experts:
                nn.init.normal_(linear.weight, std=0.02)
        else:
            self.bias = nn.Parameter(torch.zeros(n_exps, in_dim))
            self.experts = nn.ModuleList(nn.Linear(in_dim, out_dim, bias=False) for _ in range(n_exps))
            for linear in self.experts:
                nn.init.normal_(linear.weight, std=0.02)

    def gates(self, x):  # x: [..., D] -> [..., E]
        logits = x @ self.gate
        if self.noise_gate is not None and self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(x @ self.noise_gate) + MOE_NOISE_FLOOR)
        return torch.softmax(logits, dim=-1)

    def forward(self, x):  # x: [..., D] -> [..., d]
        gates = self.gates(x)  # [..., E]
        if self.expert == "linear_ln":
            return self._mix(gates, self._linear_ln_outputs(x))
        weight = torch.stack([linear.weight for linear in self.experts])  # [E, d, D]
        shift = torch.einsum("ei,eoi->eo", self.bias, weight)  # b_e W_e: [E, d]
        return self._mix(gates, self._whitened(x, weight)) - gates @ shift

    @staticmethod
    def _mix(gates, outputs):  # [..., E], [..., E, d] -> [..., d]
        return (gates.unsqueeze(-1) * outputs).sum(dim=-2)

    def _linear_ln_outputs(self, x):  # [..., D] -> [..., E, d]
        return torch.stack([norm(self.dropout(linear(x))) for linear, norm in zip(self.experts, self.norms)], dim=-2)

    def _whitened(self, x, weight):
        """Dropout_e(x) W_e [..., E, d] for the experts' weights ``weight`` [E, d, D]; the caller subtracts b_e W_e.

        Why not the plain per-expert loop (Dropout_e(x) - b_e) W_e: an adaptor runs over the whole item table
        at every training step, and there the loop cost 45 times a Linear on CPU (1.4 s a step on 12k items),
        mostly in autograd work the features never need (subtracting b_e before the matmul made every expert's
        input require a gradient) and in drawing the masks. Here only W_e and b_e get gradients, the experts'
        inputs are one tensor [E, n, D] with a mask per expert (as separate Dropout modules draw, but from one
        uniform draw, about twice as fast as ``bernoulli_``), and without dropout they share one matmul.
        """
        p = self.dropout.p
        if not (self.training and p > 0):
            return F.linear(x, weight.flatten(0, 1)).unflatten(-1, weight.shape[:2])
        flat = x.reshape(-1, x.shape[-1])  # [n, D]
        scale = 1 / (1 - p) if p < 1 else 0.0
        inputs = torch.rand(len(weight), *flat.shape, device=x.device).ge_(p).mul_(flat * scale)  # [E, n, D]
        projected = torch.bmm(inputs, weight.transpose(1, 2)).transpose(0, 1)  # [n, E, d]
        return projected.reshape(*x.shape[:-1], *weight.shape[:2])


def run_or_recompute(module, budget, tokens, *args, **kwargs):
    """``module(tokens, *args, **kwargs)``, through ``torch.utils.checkpoint`` when gradients are recorded and
    ``tokens`` [B, T, d] holds more than ``budget`` positions (B * T; ``budget`` 0 or None: never).

    Length-aware batches make the longest batch, not the average one, set a run's peak memory. Such a batch
    keeps only the module's inputs and recomputes its activations in backward, so the module's activations
    never coexist with another checkpointed module's. Dropout replays the same masks (the RNG state is
    preserved), so the loss and the gradients equal the plain call's; the cost is one more forward pass of
    the module on those batches only.
    """
    if budget and torch.is_grad_enabled() and tokens.shape[0] * tokens.shape[1] > budget:
        return checkpoint(module, tokens, *args, use_reentrant=False, **kwargs)
    return module(tokens, *args, **kwargs)


def normal_init(module, std):
    """The references' initialisation (RecBole's SASRec): N(0, std) for linear maps and embeddings, zero
    biases, LayerNorm 1 / 0; an embedding's padding row is zeroed. Use as ``module.apply(partial(...))``."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        module.weight.data[module.padding_idx].zero_()


def transfer_weights(model, state_dict, domain_specific, dimensions):
    """Copy a pre-trained state dict's weights into ``model`` by name.

    Names in ``domain_specific`` belong to the pre-training item set and are skipped. A weight whose shape
    differs means the checkpoint comes from a model with other dimensions: that raises (naming
    ``dimensions``, the settings that shape the weights) rather than silently training from scratch.
    Returns {"loaded", "domain_specific", "unused", "new"}: sorted lists of names.
    """
    own = model.state_dict()
    transferable = {name: value for name, value in state_dict.items() if name in own and name not in domain_specific}
    mismatched = [
        f"{name}: checkpoint {tuple(value.shape)}, this model {tuple(own[name].shape)}"
        for name, value in transferable.items() if value.shape != own[name].shape
    ]
    if mismatched:
        raise ValueError(
            f"the pre-trained checkpoint comes from a model with other dimensions ({dimensions}): "
            + "; ".join(mismatched[:6]) + (" ..." if len(mismatched) > 6 else "")
        )
    model.load_state_dict(transferable, strict=False)
    return {
        "loaded": sorted(transferable),
        "domain_specific": sorted(name for name in state_dict if name in domain_specific),
        "unused": sorted(name for name in state_dict if name not in own),
        "new": sorted(name for name in own if name not in transferable),
    }
