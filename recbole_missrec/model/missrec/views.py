"""MISSRec's pre-training views: a second view of every sequence (spec §5.1), built on the batch's device.

The reference drew one augmentation type per batch, rebuilt only the text side of the item-dropped view
(image features, image masks and interests stayed those of the original positions), and its scatter kept
"the item before each kept one" instead of the kept items (spec §9 #8-#10). Here the choice is made per
sequence and a view is nothing but ids: item drop = the kept ids compacted in order plus the new length
(the first item always survives, so no view is empty); word drop = a per-position flag telling the model
to read the word-dropped text table. The model looks every modality, mask and interest up by id, so all
of them follow the view by construction.
"""
import torch

from recbole_missrec.model.layers import item_drop

VIEW_SEQ = "view_item_id_list"  # [B, L] item ids of the augmented view, right-padded with 0
VIEW_SEQ_LEN = "view_item_length"  # [B] its lengths
VIEW_WORD_DROP = "view_word_drop"  # [B, L] bool: read the word-dropped text features at this position


def pretrain_view(item_seq, item_seq_len, drop_ratio, item_drop_prob, generator=None):
    """One augmented view per sequence: with probability ``item_drop_prob`` item drop (each item dropped with
    probability ``drop_ratio``), otherwise word drop (each position switched to the word-dropped text with
    probability ``drop_ratio``). Returns (item ids [B, L], lengths [B], word-drop flags [B, L] bool)."""
    batch, length = item_seq.shape
    device = item_seq.device
    hit = torch.rand(batch, length, generator=generator, device=device) < drop_ratio  # [B, L]
    drops_items = torch.rand(batch, 1, generator=generator, device=device) < item_drop_prob  # [B, 1]
    keep = ~(hit & drops_items)
    keep[:, 0] = True
    view_seq, view_len = item_drop(item_seq, item_seq_len, keep)
    real = torch.arange(length, device=device) < item_seq_len.unsqueeze(1)
    return view_seq, view_len, hit & real & ~drops_items


def add_views(interaction, item_seq_field, item_seq_len_field, drop_ratio, item_drop_prob, generator):
    """The batch with its augmented view (the ``VIEW_*`` fields) added."""
    view_seq, view_len, word_drop = pretrain_view(
        interaction[item_seq_field], interaction[item_seq_len_field], drop_ratio, item_drop_prob, generator
    )
    interaction[VIEW_SEQ] = view_seq
    interaction[VIEW_SEQ_LEN] = view_len
    interaction[VIEW_WORD_DROP] = word_drop
    return interaction
