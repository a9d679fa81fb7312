"""Losses of MISSRec: pre-training contrastive terms (spec §5.2), fine-tuning cross-entropy (§5.4) and the
interest diversity penalty of both (§5.3)."""
import torch
import torch.nn.functional as F


def full_softmax_ce(logits, target):
    """Cross-entropy over the real items only: column 0 is the padding item and never a class (§9 #24).

    logits: [B, N] over all item ids, target: [B] in 1..N-1.
    """
    return F.cross_entropy(logits[:, 1:], target - 1)


def diversity_penalty(memory, valid, reference=False):
    """Interest diversity penalty on the contextual encoder's output.

    Minimising the squared norm of the pooled interest representations pushes them to cancel out, i.e.
    to differ from one another. memory: [B, Q, D]; valid: [B, Q] bool (real interests).
    Default: masked mean over real interests, averaged over the batch, so padding and batch size do not
    change it. ``reference=True``: the reference's fraction-weighted sum over all positions (padding
    included), summed over the batch (§5.3).
    """
    dim = memory.shape[-1]
    count = valid.sum(dim=1, keepdim=True).to(memory.dtype)  # [B, 1]
    if reference:
        pooled = count / valid.shape[1] * memory.sum(dim=1)
        return pooled.pow(2).sum() / dim
    pooled = (memory * valid.unsqueeze(-1)).sum(dim=1) / count.clamp_min(1)
    return pooled.pow(2).sum(dim=1).mean() / dim


def in_batch_ce(logits, first=0):
    """Contrastive cross-entropy with in-batch negatives: row i's positive is column ``first + i``.

    logits: [B, C]; the columns are the candidates of the whole (possibly gathered) batch and ``first`` is
    where this rank's rows start among them.
    """
    labels = torch.arange(logits.shape[0], device=logits.device) + first
    return F.cross_entropy(logits, labels)


def mask_false_negatives(logits, target, candidate_items, first=0):
    """Remove in-batch "negatives" that are the row's own target item (another sequence with the same next
    item): they are not negatives. The reference keeps them (spec §9 #25).

    logits: [B, C]; target: [B] item ids; candidate_items: [C] item id of each column.
    """
    same = target.unsqueeze(1) == candidate_items.unsqueeze(0)  # [B, C]
    rows = torch.arange(logits.shape[0], device=logits.device)
    same[rows, rows + first] = False
    return logits.masked_fill(same, float("-inf"))
