"""MSM4SR's cross-modality contrastive loss, CMCL (spec §4.2). Next-item prediction is the shared
``layers.in_batch_infonce``.

The text sequence vector a_i and the image sequence vector b_i of the same user are the positive pair;
the negatives are the other users' vectors of the other modality (inter-modal) and of the same one
(intra-modal, the anchor itself left out). Written as log-softmax over one row of logits [inter | intra],
so there is no exp/sum/log cancellation (§8 #8); pairs of users with the same target item are false
negatives, handled by the shared duplicate modes (reference: their logit is 0, §4.2).

The reference's second direction anchors the intra-modal negatives on b but keeps the inter-modal row of
a (a_i . b_j instead of b_i . a_j), so the loss is not symmetric (§8 #7): ``symmetric=False`` keeps that.
"""
import torch

from recbole_missrec.model.layers import in_batch_infonce


def _one_direction(inter, intra, first, duplicates, mode):
    """InfoNCE of one anchor modality: inter [B, C] (positive at column first + i), intra [B, C]."""
    rows = torch.arange(intra.shape[0], device=intra.device)
    intra = intra.index_put((rows, rows + first), torch.tensor(float("-inf"), device=intra.device))
    both = None if duplicates is None else torch.cat([duplicates, duplicates], dim=1)
    return in_batch_infonce(torch.cat([inter, intra], dim=1), first, both, mode)


def cmcl(a, b, a_all, b_all, temperature, first=0, duplicates=None, mode="none", symmetric=True):
    """(mean l1 + mean l2) / 2 for unit sequence vectors a, b [B, d] of this process's rows and a_all, b_all
    [C, d] of every in-batch row (this process's start at ``first``); ``duplicates`` [B, C]: the shared
    duplicate mask of the rows' targets, handled per ``mode``."""
    inter = a @ b_all.T / temperature  # [B, C]: a_i . b_j
    l1 = _one_direction(inter, a @ a_all.T / temperature, first, duplicates, mode)
    reverse = b @ a_all.T / temperature if symmetric else inter
    l2 = _one_direction(reverse, b @ b_all.T / temperature, first, duplicates, mode)
    return (l1 + l2) / 2
