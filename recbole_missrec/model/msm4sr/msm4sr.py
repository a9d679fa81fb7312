"""MSM4SR (renamed MP4SR): multimodal pre-training for sequential recommendation via contrastive learning
(arXiv 2303.11879), msm4sr-reference.md §3-§5.

Every item is encoded per modality from its feature vectors (``item_encoder.py``: attention pooling, then
a mixture-of-experts adaptor). One causal SASRec Transformer, shared by the modalities, reads a user's
text sequence and image sequence; each gives a unit sequence vector. A candidate's score is the sum over
modalities of the cosine between that modality's sequence vector and the candidate's vector.

Stages (``train_stage``):
- ``pretrain``: item drop and complementary mixup (``augment.py``); loss = nip_weight * next-item InfoNCE
  per modality + lambda * CMCL between the two sequence vectors (``losses.py``). No ID embeddings, so the
  weights transfer to any item set.
- ``finetune`` (the reference's fine-tuning): an item-ID embedding is added to the sequence inputs and to
  both of a candidate's vectors; cross-entropy of score / temperature over all real items.
- ``inductive_ft``: the same without ID embeddings: items are ranked from their features alone, so items
  never seen in training can be recommended.

A missing modality (an item without an image) is a zero feature plus a presence flag. On the candidate side
the item's score is the mean of the cosines of the modalities it has, times the number of modalities (the
plain sum when it has all). On the sequence side it takes the token of a modality it has in the other
modality's sequence, so both sequences stay the same length and position-aligned (which mixup relies on).
``mask_missing_modality=False`` feeds the zero feature through the adaptor as the reference would.
With one modality (``modal_type: text``) the model has one sequence, next-item prediction only (no CMCL,
no mixup).

Hooks the plugin's trainers call: ``prepare_batch`` (pre-training augmentation draws) and ``gather_rows``
(in-batch negatives from every data-parallel rank, when ``gather_negatives``); fine-tuning runs use
``load_pretrained`` and ``freeze_backbone``. The serving protocol (``recbole_missrec/serving/__init__.py``):
``forward`` (the query, [B, M, d]), ``score``, ``history_offset``, ``add_items``, ``retrieval_vectors``,
``query_vectors``, ``item_embeddings``.

``history_bias`` (off by default; a plugin addition, not the paper's): one learned offset for the items of a
row's own history (``layers.HistoryBias``), as in MISSRec and UniSRec.
"""
from functools import partial

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from torch import nn

from recbole_missrec.model.layers import (
    DUPLICATE_MODES, ITEM_DROP_MODES, HistoryBias, duplicate_mask, full_softmax_ce, in_batch_infonce, item_drop,
    local_rows, modality_presence, normal_init, per_distinct, presence_weights, transfer_weights,
)
from recbole_missrec.model.msm4sr.augment import AUG_KEEP, AUG_MIX, add_augmentations, complementary_mixup
from recbole_missrec.model.msm4sr.item_encoder import ItemEncoder
from recbole_missrec.model.msm4sr.losses import cmcl

MODALITIES = ("text", "img")
# The ID table belongs to one item set: re-learned on another dataset (the feature tables are never saved).
DOMAIN_SPECIFIC = ("item_embedding.weight",)
DIMENSIONS = ("hidden_size, inner_size, n_layers, n_exps, MAX_ITEM_LIST_LENGTH, or the feature widths plm_size / "
              "img_size")


def _option(config, key, allowed):
    value = config[key]
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not supported by MSM4SR; use one of {list(allowed)}")
    return value


def trim_padding(item_seq, item_seq_len):
    """The batch without the padding columns that no sequence reaches. Exact: positions count from the
    oldest item and the attention is causal with padding masked; the Transformer's cost then follows the
    batch's longest real sequence, not MAX_ITEM_LIST_LENGTH."""
    return item_seq[:, : int(item_seq_len.max())]


class MSM4SR(SequentialRecommender):
    STAGES = {"pretrain": "pretrain", "finetune": "finetune", "inductive_ft": "finetune"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_stage = _option(config, "train_stage", self.STAGES)
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.temperature = config["temperature"]
        self.n_exps = config["n_exps"]
        self.adaptor_dropout_prob = config["adaptor_dropout_prob"]
        self.pool_trainable = config["pool_trainable"]
        self.pool_mask_pad = config["pool_mask_pad"]
        self.pool_act = config["pool_act"]
        self.mask_missing_modality = config["mask_missing_modality"]

        self.gather_rows = local_rows

        self.modalities = [m for m in MODALITIES if m in dataset.item_features]
        if not self.modalities:
            raise ValueError("MSM4SR reads item features: set modal_type to text, img or text_img")
        stores = {m: dataset.item_features[m] for m in self.modalities}
        missing = torch.stack([~store.present for store in stores.values()], dim=1)  # [N, M]
        self.register_buffer("item_present", modality_presence(missing, self.mask_missing_modality), persistent=False)

        d = self.hidden_size
        self.position_embedding = nn.Embedding(self.max_seq_length, d)
        self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0) if self.train_stage == "finetune" else None
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=d,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.LayerNorm = nn.LayerNorm(d, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.apply(partial(normal_init, std=self.initializer_range))
        # Built after SASRec's init, as in the reference: the pooling keeps PyTorch's default init and the
        # adaptor its own (expert weights N(0, 0.02), default biases, uniform gates), spec §3.1.
        self.item_encoders = nn.ModuleDict({
            m: ItemEncoder(store, d, self.n_exps, self.adaptor_dropout_prob, self.layer_norm_eps,
                           self.pool_trainable, self.pool_mask_pad, self.pool_act)
            for m, store in stores.items()
        })
        # scores are sums of M cosines (training divides by temperature): the bias is in cosine units, times M
        fine_tuning = self.train_stage != "pretrain"
        self.history_bias = HistoryBias(len(self.modalities)) if config["history_bias"] and fine_tuning else None
        if self.train_stage == "pretrain":
            self._init_pretrain(config)

    def _init_pretrain(self, config):
        """Pre-training's loss weights, augmentations and false-negative handling (spec §3.4, §4)."""
        self.nip_weight = config["nip_weight"]
        self.cmcl_weight = config["lambda"]
        self.duplicates = _option(config, "dup_mask", DUPLICATE_MODES)
        self.cmcl_symmetric = config["cmcl_symmetric"]
        self.item_drop_mode = _option(config, "item_drop_mode", ITEM_DROP_MODES)
        self.item_drop_max = config["item_drop_max"]
        self.mixup = config["mixup"] and len(self.modalities) == 2
        self.mixup_max = config["mixup_max"]
        self.per_sequence_rates = _option(config, "augment_rates", ("batch", "sequence")) == "sequence"
        self.gather_negatives = config["gather_negatives"]

    # ---- items -----------------------------------------------------------------------------------
    def item_tokens(self, item_ids):
        """Adapted (not normalised) vectors of the given items, every modality: [*item_ids.shape, M, d].
        Each distinct item is pooled and adapted once, so the cost follows the items a step really needs."""
        def encode(ids):  # [U] -> [U, M, d]
            return torch.stack([self.item_encoders[m](ids) for m in self.modalities], dim=-2)

        return per_distinct(item_ids, encode)

    def weighted_candidates(self, tokens, item_ids):
        """Candidate vectors [C, M*d] whose dot product with flattened sequence vectors [B, M*d] is the score.

        tokens [C, M, d] of item_ids [C]. Each modality's vector is normalised after adding the item's ID
        embedding (fine-tuning) and scaled by M / (modalities the item has), 0 for a missing one: the sum
        of the cosines, renormalised over the modalities present.
        """
        if self.item_embedding is not None:
            tokens = tokens + self.id_embedding(item_ids).unsqueeze(-2)
        weights = presence_weights(self.item_present[item_ids], tokens.dtype) * len(self.modalities)  # [C, M]
        return (F.normalize(tokens, dim=-1) * weights.unsqueeze(-1)).flatten(-2)

    def id_embedding(self, item_ids):
        """ID embeddings [*item_ids.shape, d]. Items added after training (``add_items``) have no row: they
        read the padding row (zeros), so they are their features alone."""
        trained = item_ids < self.item_embedding.num_embeddings
        return self.item_embedding(item_ids.masked_fill(~trained, 0))

    # ---- sequences -------------------------------------------------------------------------------
    def sequence_tokens(self, tokens, item_seq):
        """Item tokens of the modality sequences, tokens [B, L, M, d]: where an item lacks a modality, that
        sequence takes the mean of the item's present tokens (with two modalities: the other one)."""
        present = self.item_present[item_seq]  # [B, L, M]
        fill = (tokens * presence_weights(present, tokens.dtype).unsqueeze(-1)).sum(dim=-2, keepdim=True)
        return torch.where(present.unsqueeze(-1), tokens, fill)

    def encode(self, item_seq, item_seq_len, tokens):
        """The shared causal Transformer over every modality's sequence: tokens [B, L, M, d] -> unit sequence
        vectors [B, M, d], read at the last real item. The M sequences run as one batch of B*M rows."""
        batch, length, n_modalities, _ = tokens.shape
        position = self.position_embedding(torch.arange(length, device=item_seq.device))  # [L, d]
        x = tokens + position.unsqueeze(1)
        if self.item_embedding is not None:
            x = x + self.id_embedding(item_seq).unsqueeze(-2)
        x = self.dropout(self.LayerNorm(x)).transpose(1, 2).flatten(0, 1)  # [B*M, L, d]
        mask = self.get_attention_mask(item_seq).repeat_interleave(n_modalities, dim=0)  # causal + padding
        output = self.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]
        last = self.gather_indexes(output, item_seq_len.repeat_interleave(n_modalities) - 1)  # [B*M, d]
        return F.normalize(last, dim=-1).view(batch, n_modalities, -1)

    def forward(self, item_seq, item_seq_len, all_tokens=None):
        """Unit sequence vectors [B, M, d], one per modality. ``all_tokens`` [N, M, d]: every item's tokens,
        when the caller computed them for the candidates already."""
        item_seq = trim_padding(item_seq, item_seq_len)
        tokens = self.item_tokens(item_seq) if all_tokens is None else all_tokens[item_seq]
        return self.encode(item_seq, item_seq_len, self.sequence_tokens(tokens, item_seq))

    def full_scores(self, item_seq, item_seq_len):
        """Sum of the modality cosines of every sequence with every item, plus the history offset
        (``history_bias``): [B, N] (column 0 is padding)."""
        all_items = torch.arange(self.n_items, device=item_seq.device)
        tokens = self.item_tokens(all_items)  # [N, M, d]
        seq_output = self.forward(item_seq, item_seq_len, tokens)
        scores = seq_output.flatten(1) @ self.weighted_candidates(tokens, all_items).T
        return scores if self.history_bias is None else self.history_bias(scores, item_seq)

    # ---- losses ----------------------------------------------------------------------------------
    def calculate_loss(self, interaction):
        if self.train_stage == "pretrain":
            return self._pretrain_loss(interaction)
        scores = self.full_scores(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return full_softmax_ce(scores / self.temperature, interaction[self.POS_ITEM_ID])

    def _gather(self, x):
        """Rows of every data-parallel rank when in-batch negatives are gathered (and this rank's offset),
        else (x, 0)."""
        return self.gather_rows(x) if self.gather_negatives else (x, 0)

    def _pretrain_loss(self, interaction):
        """Item drop, mixup, then the named pre-training terms (spec §3.4, §4); their sum is the loss."""
        if AUG_KEEP not in interaction:
            raise KeyError("MSM4SR pre-training reads the batch's augmentation draws: call model.prepare_batch("
                           "interaction, generator) first (the plugin's trainers do)")
        item_seq, item_seq_len = item_drop(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                           interaction[AUG_KEEP], self.item_drop_mode)
        item_seq = trim_padding(item_seq, item_seq_len)
        batch, length = item_seq.shape
        target = interaction[self.POS_ITEM_ID]
        tokens = self.item_tokens(torch.cat([item_seq.flatten(), target]))  # [B*L + B, M, d]
        seq_tokens = self.sequence_tokens(tokens[: batch * length].unflatten(0, (batch, length)), item_seq)
        if self.mixup:
            seq_tokens = complementary_mixup(seq_tokens, interaction[AUG_MIX][:, :length] & (item_seq > 0))
        seq_output = self.encode(item_seq, item_seq_len, seq_tokens)  # [B, M, d]
        return self.pretrain_terms(seq_output, F.normalize(tokens[batch * length:], dim=-1), target)

    def pretrain_terms(self, seq_output, candidates, target):
        """{"nip_<modality>": nip_weight * NIP, "cmcl": lambda * CMCL} of unit sequence vectors [B, M, d]
        and the targets' unit vectors [B, M, d]. A target without a modality is no negative in that
        modality's NIP and its row counts 0 there (the mean stays over all rows, as data-parallel shares
        are weighed)."""
        targets, first = self._gather(target)  # [C]
        sequences, _ = self._gather(seq_output)  # [C, M, d]
        items, _ = self._gather(candidates)  # [C, M, d]
        present = self.item_present[targets]  # [C, M]
        duplicates = duplicate_mask(target, targets, first) if self.duplicates != "none" else None
        terms = {}
        for k, modality in enumerate(self.modalities):
            logits = (seq_output[:, k] @ items[:, k].T / self.temperature).masked_fill(~present[:, k], float("-inf"))
            nip = in_batch_infonce(logits, first, duplicates, self.duplicates, rows=self.item_present[target, k])
            terms[f"nip_{modality}"] = self.nip_weight * nip
        if len(self.modalities) == 2:
            contrast = cmcl(seq_output[:, 0], seq_output[:, 1], sequences[:, 0], sequences[:, 1], self.temperature,
                            first, duplicates, self.duplicates, symmetric=self.cmcl_symmetric)
            terms["cmcl"] = self.cmcl_weight * contrast
        return terms

    # ---- evaluation ------------------------------------------------------------------------------
    def predict(self, interaction):
        item_seq, item_ids = interaction[self.ITEM_SEQ], interaction[self.ITEM_ID]
        seq_output = self.forward(item_seq, interaction[self.ITEM_SEQ_LEN])
        scores = (seq_output.flatten(1) * self.weighted_candidates(self.item_tokens(item_ids), item_ids)).sum(-1)
        return scores if self.history_bias is None else self.history_bias.paired(scores, item_seq, item_ids)

    def full_sort_predict(self, interaction):
        scores = self.full_scores(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        scores[:, 0] = float("-inf")  # the padding item is never recommended
        return scores

    # ---- trainer hooks ---------------------------------------------------------------------------
    def prepare_batch(self, interaction, generator):
        """Pre-training: the batch's item-drop and mixup draws (``augment.py``), from ``generator``."""
        if self.train_stage != "pretrain":
            return interaction
        mixup_max = self.mixup_max if self.mixup else None
        return add_augmentations(interaction, self.ITEM_SEQ, self.item_drop_max, mixup_max, self.per_sequence_rates,
                                 generator)

    # ---- serving (protocol: recbole_missrec/serving/__init__.py) ---------------------------------
    def score(self, query, item_ids):
        """Scores [B, C] of candidates item_ids [C] for queries [B, M, d] (``forward``): the columns of
        ``full_sort_predict``."""
        return query.flatten(1) @ self.weighted_candidates(self.item_tokens(item_ids), item_ids).T

    def history_offset(self):
        """The offset of a row's own history items in ``full_sort_predict`` (``history_bias``), or None."""
        return None if self.history_bias is None else self.history_bias.offset().detach()

    @torch.no_grad()
    def add_items(self, stores):
        """Append items ``n_items ..`` from their features alone (``stores``: {store name: FeatureStore of the
        new rows, no padding row}): every modality's encoder gains their feature rows (``ItemEncoder.add_items``)
        and the presence flags grow. Returns a note for the caller."""
        if self.train_stage == "pretrain":
            raise RuntimeError("add_items needs a fine-tuned MSM4SR (train_stage finetune or inductive_ft)")
        missing = torch.stack([~stores[m].present for m in self.modalities], dim=1).to(self.item_present.device)
        present = modality_presence(missing, self.mask_missing_modality)  # [n, M]
        dropped = {m: self.item_encoders[m].add_items(stores[m]) for m in self.modalities}
        self.item_present = torch.cat([self.item_present, present])
        n = present.shape[0]
        self.n_items += n
        note = f"{n} new item{'s' * (n != 1)}, encoded from their features"
        lacking = int(missing.any(dim=1).sum())
        if lacking:
            note += f" ({lacking} without every modality, treated as in training)"
        for modality, count in dropped.items():
            if count:
                note += (f"; {count} kept only the first {self.item_encoders[modality].slot_mask.shape[1]} "
                         f"{modality} vectors (pool_mask_pad=False pools a fixed slot count)")
        if self.item_embedding is not None:
            note += ("; fine-tuned with item IDs: new items have no ID embedding, so they read the padding row "
                     "(zeros) as candidates and in histories: their features alone")
        return note

    @torch.no_grad()
    def retrieval_vectors(self, item_ids):
        """{"fused": (``weighted_candidates`` [C, M*d], all usable)}: their inner product with the flattened
        query is the score exactly."""
        vectors = self.weighted_candidates(self.item_tokens(item_ids), item_ids)
        return {"fused": (vectors, torch.ones_like(item_ids, dtype=torch.bool))}

    def query_vectors(self, query):
        """{"fused": the query flattened, [B, M*d]}."""
        return {"fused": query.flatten(1)}

    @torch.no_grad()
    def item_embeddings(self, item_ids):
        """What ``score`` uses, for export: ``vectors`` [C, M*d], modality blocks in the order of
        ``self.modalities``; block m is the item's unit vector of modality m (its adapted features, plus its
        ID embedding when fine-tuned with IDs, then L2-normalised) times M / (modalities the item has), zero
        for a missing one.

        score(q, item) = q.flatten() . vectors[item], q [M, d] the unit sequence vectors (``forward``), one per
        modality: the sum of the cosines of the present modalities, renormalised to M of them, plus
        ``history_offset`` (with ``history_bias``) for an item of the row's own history. Training divides it
        by ``temperature``, which does not change the ranking."""
        return {"vectors": self.weighted_candidates(self.item_tokens(item_ids), item_ids)}

    # ---- transfer --------------------------------------------------------------------------------
    def load_pretrained(self, state_dict):
        """Copy any MSM4SR checkpoint's weights into this model by name: position table, Transformer,
        LayerNorm, the pooling and adaptor of every modality both have. The ID table is skipped (it belongs
        to the checkpoint's items); a frozen pooling's cache follows the loaded weights. Other dimensions
        raise. Returns {"loaded", "domain_specific", "unused", "new"} (``layers.transfer_weights``)."""
        return transfer_weights(self, state_dict, DOMAIN_SPECIFIC, DIMENSIONS)

    def freeze_backbone(self):
        """Keep the pre-trained sequence encoder (position table and Transformer) fixed; the item encoders,
        the input LayerNorm and the ID table train. The reference trains everything (``freeze_backbone:
        False`` in MSM4SR.finetune.yaml)."""
        for module in (self.position_embedding, self.trm_encoder):
            module.requires_grad_(False)
