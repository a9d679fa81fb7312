"""Pre-training augmentation: a second view of every sequence (spec §5.1), built on the batch's device.

The reference drew one augmentation type per batch, rebuilt only the text side of the item-dropped view
(image features, image masks and interests stayed those of the original positions), and its scatter kept
"the item before each kept one" instead of the kept items (spec §9 #8-#10). Here the choice is made per
sequence and a view is nothing but ids: item drop = the kept ids compacted in order plus the new length;
word drop = a per-position flag telling the model to read the word-dropped text table. The model looks
every modality, mask and interest up by id, so all of them follow the view by construction.
"""
import torch

VIEW_SEQ = "view_item_id_list"  # [B, L] item ids of the augmented view, right-padded with 0
VIEW_SEQ_LEN = "view_item_length"  # [B] its lengths
VIEW_WORD_DROP = "view_word_drop"  # [B, L] bool: read the word-dropped text features at this position


def item_drop(item_seq, item_seq_len, keep):
    """The items where ``keep`` is True, in their order and left-aligned; the first item always survives so
    that no view is empty. item_seq: [B, L] right-padded; keep: [B, L] bool. Returns ([B, L], [B])."""
    positions = torch.arange(item_seq.shape[1], device=item_seq.device)
    keep = keep & (positions < item_seq_len.unsqueeze(1))
    keep[:, 0] = True
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept positions first, in order
    return torch.gather(item_seq * keep, 1, order), keep.sum(dim=1)


def pretrain_view(item_seq, item_seq_len, drop_ratio, item_drop_prob, generator=None):
    """One augmented view per sequence: with probability ``item_drop_prob`` item drop (each item dropped with
    probability ``drop_ratio``), otherwise word drop (each position switched to the word-dropped text with
    probability ``drop_ratio``). Returns (item ids [B, L], lengths [B], word-drop flags [B, L] bool)."""
    batch, length = item_seq.shape
    device = item_seq.device
    hit = torch.rand(batch, length, generator=generator, device=device) < drop_ratio  # [B, L]
    drops_items = torch.rand(batch, 1, generator=generator, device=device) < item_drop_prob  # [B, 1]
    view_seq, view_len = item_drop(item_seq, item_seq_len, ~(hit & drops_items))
    real = torch.arange(length, device=device) < item_seq_len.unsqueeze(1)
    return view_seq, view_len, hit & real & ~drops_items


class PretrainAugmentation:
    """Adds the augmented view (``VIEW_*`` fields) to a batch that is already on its device.

    The random draws come from a generator re-seeded from the run seed at every epoch, so a run resumed at
    an epoch boundary draws exactly the views of an uninterrupted one, and under DDP every rank draws the
    same views for the global batch before taking its share.
    """

    def __init__(self, config):
        self.item_seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.item_seq_len_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.drop_ratio = config["item_drop_ratio"]
        self.item_drop_prob = config["item_drop_coefficient"]
        self.seed = int(config["seed"])
        self.epoch = 0
        self.generator = None

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.generator = None

    def _generator(self, device):
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed * 1000 + 500 + self.epoch)
        return self.generator

    def __call__(self, interaction):
        item_seq = interaction[self.item_seq_field]
        view_seq, view_len, word_drop = pretrain_view(
            item_seq, interaction[self.item_seq_len_field], self.drop_ratio, self.item_drop_prob,
            self._generator(item_seq.device),
        )
        interaction[VIEW_SEQ] = view_seq
        interaction[VIEW_SEQ_LEN] = view_len
        interaction[VIEW_WORD_DROP] = word_drop
        return interaction
