"""UniSRec's pre-training view: the second view of every sequence that the seq->seq contrast pairs with the
sequence itself.

As in the reference, a position is hit with probability ``item_drop_ratio`` and the view is either item drop
(the hit items leave the sequence; the first item always stays) or word drop (the hit positions read the
text features of the word-dropped item text, ``text_aug``), item drop with probability
``item_drop_coefficient``. The reference picks the kind once per batch (``augment_choice: batch``);
``sequence`` picks it per sequence. The draws happen in the model's ``prepare_batch`` hook from the
trainer's per-epoch generator, so a run is reproducible and a data-parallel batch is drawn once before it is
split. A view is ids, lengths and word-drop flags only: the model looks the features up.
"""
import torch

from recbole_missrec.model.layers import item_drop

VIEW_SEQ = "unisrec_view_seq"  # [B, L'] item ids of the view, right-padded with 0 (L' = its longest)
VIEW_SEQ_LEN = "unisrec_view_len"  # [B] its lengths
VIEW_WORD_DROP = "unisrec_view_word_drop"  # [B, L'] bool: read the word-dropped text at this position
AUGMENT_CHOICES = ("batch", "sequence")


def draw_view(item_seq, item_seq_len, drop_ratio, item_drop_prob, per_sequence, drop_mode, generator=None):
    """(view ids [B, L'], view lengths [B], word-drop flags [B, L'] bool) of right-padded sequences [B, L].
    ``drop_mode``: ``layers.item_drop``'s mode (``delete`` or the reference's ``reference`` scatter)."""
    batch, length = item_seq.shape
    device = item_seq.device
    hit = torch.rand(batch, length, generator=generator, device=device) < drop_ratio  # [B, L]
    choices = batch if per_sequence else 1
    drops_items = torch.rand(choices, 1, generator=generator, device=device) < item_drop_prob  # [B or 1, 1]
    keep = ~hit
    keep[:, 0] = True
    dropped_seq, dropped_len = item_drop(item_seq, item_seq_len, keep, drop_mode)
    real = torch.arange(length, device=device) < item_seq_len.unsqueeze(1)
    view_seq = torch.where(drops_items, dropped_seq, item_seq)
    view_len = torch.where(drops_items.squeeze(1), dropped_len, item_seq_len)
    word_drop = hit & real & ~drops_items
    longest = int(view_len.max())
    return view_seq[:, :longest], view_len, word_drop[:, :longest]


def add_view(interaction, item_seq_field, item_seq_len_field, drop_ratio, item_drop_prob, per_sequence, drop_mode,
             generator):
    """The batch with its view (the ``VIEW_*`` fields) added."""
    view_seq, view_len, word_drop = draw_view(interaction[item_seq_field], interaction[item_seq_len_field],
                                              drop_ratio, item_drop_prob, per_sequence, drop_mode, generator)
    interaction[VIEW_SEQ] = view_seq
    interaction[VIEW_SEQ_LEN] = view_len
    interaction[VIEW_WORD_DROP] = word_drop
    return interaction
