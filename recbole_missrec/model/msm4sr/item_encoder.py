"""MSM4SR's item encoder, one per modality (spec §3.2): attention pooling over an item's vectors (sentences,
image keywords), then the mixture-of-experts adaptor (``layers.MoEAdaptor``, expert ``linear_ln``).

The reference copied the pooled features into a frozen table's ``.data``, so the pooling never trained
(§8 #2); its softmax gave the zero-padded slots weight, shrinking items with fewer vectors (§8 #3); its
scorer had no nonlinearity (§8 #4, a local edit of RecBole's VanillaAttention). Here the pooling trains
inside autograd and ignores padded slots by default. ``pool_trainable=False`` pools once with the initial
(or loaded) weights and keeps the result: the reference's numbers, without re-pooling every item at every
step. ``pool_mask_pad=False`` and ``pool_act`` restore the other two behaviours.

With one vector per item (the raw ``.featXCLS`` files, "MSM4SR-CLIP") the softmax weight is exactly 1:
there is nothing to pool, so no pooling layer is built and the features go straight to the adaptor.

Serving appends items after training (``ItemEncoder.add_items``). A bundle's table may then be wider than
the trained one (the new items brought more vectors), so the encoder keeps only the slots some item uses:
the trained rows build the trained encoder again.
"""
import torch
from torch import nn

from recbole_missrec.data.feature_store import FeatureStore
from recbole_missrec.model.layers import MoEAdaptor

POOL_ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU}


class AttentionPooling(nn.Module):
    """p = sum_j a_j x_j over an item's S vectors, a = softmax_j(w2' act(W1 x_j + b1) + b2)."""

    def __init__(self, dim, hidden, act="none", mask_pad=True):
        super().__init__()
        if act not in POOL_ACTIVATIONS:
            raise ValueError(f"pool_act={act!r} is not supported; use one of {list(POOL_ACTIVATIONS)}")
        self.score = nn.Sequential(nn.Linear(dim, hidden), POOL_ACTIVATIONS[act](), nn.Linear(hidden, 1))
        self.mask_pad = mask_pad

    def forward(self, vectors, slot_mask):  # [..., S, D], [..., S] bool -> [..., D]
        logits = self.score(vectors).squeeze(-1)  # [..., S]
        if self.mask_pad:
            # an item with no vector at all keeps its logits: its slots are zeros, so it pools to 0
            logits = logits.masked_fill(~slot_mask & slot_mask.any(dim=-1, keepdim=True), float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        return (weights.unsqueeze(-2) @ vectors).squeeze(-2)


def used_slots(store):
    """The store without the trailing slots no item uses (a dataset's table has none; a bundle's table
    grown by items added later may)."""
    used = store.slot_mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if used.numel() else 1
    return store._replace(table=store.table[:, :width], slot_mask=store.slot_mask[:, :width])


def _repool(encoder, incompatible_keys):
    """Load hook: a frozen pooling's cached result follows the pooling weights just loaded."""
    encoder.refresh_pooled()


class ItemEncoder(nn.Module):
    """Adapted vectors [..., d] of items of one modality, from that modality's feature store."""

    def __init__(self, store, hidden_size, n_exps, dropout, layer_norm_eps, pool_trainable=True, pool_mask_pad=True,
                 pool_act="none"):
        super().__init__()
        self.pool_trainable = pool_trainable
        self.pool_mask_pad = pool_mask_pad
        self.pooling = None
        store = used_slots(store)
        if store.slots == 1:
            self.register_buffer("features", store.table[:, 0], persistent=False)  # [N, D]
        else:
            self.register_buffer("features", store.table, persistent=False)  # [N, S, D]
            self.register_buffer("slot_mask", store.slot_mask, persistent=False)  # [N, S]
            self.pooling = AttentionPooling(store.dim, hidden_size, pool_act, pool_mask_pad)
            if not pool_trainable:
                self.pooling.requires_grad_(False)
                self.register_buffer("pooled_table", torch.empty(0), persistent=False)
                self.refresh_pooled()
                self.register_load_state_dict_post_hook(_repool)
        self.adaptor = MoEAdaptor(n_exps, store.dim, hidden_size, dropout, expert="linear_ln",
                                  layer_norm_eps=layer_norm_eps)

    @torch.no_grad()
    def refresh_pooled(self):
        """Pool every item with the current (frozen) pooling weights: [N, D]."""
        if self.pooling is not None and not self.pool_trainable:
            self.pooled_table = self.pooling(self.features, self.slot_mask)

    def pooled(self, item_ids):
        """One feature vector per item: [*item_ids.shape, D]."""
        if self.pooling is None:
            return self.features[item_ids]
        if not self.pool_trainable:
            return self.pooled_table[item_ids]
        return self.pooling(self.features[item_ids], self.slot_mask[item_ids])

    @torch.no_grad()
    def add_items(self, store):
        """Append the feature rows of new items (``store``: a FeatureStore of them, no padding row); a frozen
        pooling's cache gains their pooled rows. Without a pooling layer (trained on one vector per item)
        a new item's vectors are averaged. The table widens to the larger slot count, except under the
        reference pooling (``pool_mask_pad=False``), which weighs padded slots: widening would change the
        trained items, so a new item keeps its first S vectors there. Returns how many new items lost
        vectors that way."""
        if self.pooling is None:
            self.features = torch.cat([self.features, store.pooled().to(self.features)])
            return 0
        store = used_slots(store)
        dropped = 0
        if not self.pool_mask_pad and store.slots > self.slot_mask.shape[1]:
            dropped = int(store.slot_mask[:, self.slot_mask.shape[1]:].any(dim=1).sum())
            store = store._replace(table=store.table[:, :self.slot_mask.shape[1]],
                                   slot_mask=store.slot_mask[:, :self.slot_mask.shape[1]])
        own = FeatureStore(self.features, self.slot_mask, self.slot_mask.any(dim=1))
        first = own.table.shape[0]
        grown = own.extended(store.table.to(self.features), store.slot_mask.to(self.slot_mask))
        self.features, self.slot_mask = grown.table, grown.slot_mask
        if not self.pool_trainable:
            new_rows = self.pooling(self.features[first:], self.slot_mask[first:])  # [n, D]
            self.pooled_table = torch.cat([self.pooled_table, new_rows])
        return dropped

    def forward(self, item_ids):
        return self.adaptor(self.pooled(item_ids))
