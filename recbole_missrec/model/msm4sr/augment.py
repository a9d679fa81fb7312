"""MSM4SR's pre-training augmentations (spec §3.4): item drop, then complementary sequence mixup.

The random draws happen in the trainer's ``prepare_batch`` hook (:func:`add_augmentations`, from the
per-epoch generator it passes), so a run is reproducible and a data-parallel batch is drawn once before it
is split; the model applies them (:func:`complementary_mixup`, ``layers.item_drop``). As in the reference,
one drop rate r ~ U(0, drop_max) and one mixup rate p ~ U(0, mixup_max) are drawn per batch;
``per_sequence`` draws them per sequence instead.
"""
import torch

AUG_KEEP = "msm4sr_keep"  # [B, L] bool: item drop keeps the item at this position
AUG_MIX = "msm4sr_mix"  # [B, L] bool: mixup swaps the modalities at this position of the item-dropped sequence


def draw_augmentations(shape, drop_max, mixup_max, per_sequence, generator, device):
    """(keep [B, L], mix [B, L] or None): keep ~ Bernoulli(1 - r), mix ~ Bernoulli(p); ``mixup_max=None``
    draws no mixup."""
    rows = shape[0] if per_sequence else 1

    def bernoulli(max_rate):
        rate = torch.rand(rows, 1, generator=generator, device=device) * max_rate  # [rows, 1]
        return torch.rand(shape, generator=generator, device=device) < rate

    keep = ~bernoulli(drop_max)
    return keep, (None if mixup_max is None else bernoulli(mixup_max))


def add_augmentations(interaction, item_seq_field, drop_max, mixup_max, per_sequence, generator):
    """The batch with its augmentation draws (the ``AUG_*`` fields) added."""
    item_seq = interaction[item_seq_field]
    keep, mix = draw_augmentations(item_seq.shape, drop_max, mixup_max, per_sequence, generator, item_seq.device)
    interaction[AUG_KEEP] = keep
    if mix is not None:
        interaction[AUG_MIX] = mix
    return interaction


def complementary_mixup(tokens, mix):
    """Swap the two modalities' item embeddings where ``mix`` [B, L] is True: tokens [B, L, 2, d], (text,
    image) per position. The same positions swap in both sequences, so the two stay complementary."""
    return torch.where(mix.unsqueeze(-1).unsqueeze(-1), tokens.flip(-2), tokens)
