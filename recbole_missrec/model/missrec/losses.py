"""MISSRec's own loss term: the interest diversity penalty of fine-tuning and pre-training (spec §5.3).
The contrastive and cross-entropy terms it shares with other families live in ``model/layers.py``."""


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
