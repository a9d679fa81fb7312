"""UniSRec: universal sequence representations from item text (Hou et al., KDD 2022).

An item is its text features through parametric whitening and a mixture-of-experts adaptor
(``layers.MoEAdaptor``, whitening experts, noisy gates in training); a sequence goes through SASRec's causal
Transformer (RecBole's ``TransformerEncoder``) and is read at its last real item. Sequence and item vectors
are L2-normalised, and every stage scores by cosine / temperature.

- ``pretrain`` (text only, no IDs, so every weight transfers): seq->item contrast against in-batch items plus
  lambda * seq->seq contrast between each sequence and its item-drop or word-drop view (``views.py``, drawn
  in ``prepare_batch``).
- ``inductive_ft``: item = MoE(text); ``transductive_ft``: item = MoE(text) + ID embedding, on the candidate
  and on the sequence side. Full-softmax cross-entropy; ``load_pretrained`` transfers a pre-training
  checkpoint and ``freeze_backbone`` fixes what the reference's ``fix_enc`` fixes.

The model reads the ``text`` feature store only: a dataset's images are ignored (UniSRec.yaml loads none).
The serving protocol (``recbole_missrec/serving/__init__.py``): ``forward`` (the query, [B, d]), ``score``,
``add_items``, ``retrieval_vectors``, ``query_vectors``, ``item_embeddings``.
"""
from functools import partial

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from torch import nn

from recbole_missrec.data.dataset import AUGMENTED_TEXT
from recbole_missrec.model.layers import (
    DUPLICATE_MODES, ITEM_DROP_MODES, HistoryBias, MoEAdaptor, duplicate_mask, full_softmax_ce, in_batch_infonce,
    local_rows, normal_init, run_or_recompute, transfer_weights,
)
from recbole_missrec.model.unisrec.views import AUGMENT_CHOICES, VIEW_SEQ, VIEW_SEQ_LEN, VIEW_WORD_DROP, add_view

# The ID table belongs to one item set: re-learned on another dataset (the feature tables are never saved).
DOMAIN_SPECIFIC = ("item_embedding.weight",)
DIMENSIONS = "hidden_size, inner_size, n_layers, n_exps, MAX_ITEM_LIST_LENGTH, or the text feature width plm_size"
# SASRec's Transformer (RecBole's TransformerEncoder), built with these settings as they are.
TRANSFORMER_SETTINGS = ("n_layers", "n_heads", "inner_size", "hidden_dropout_prob", "attn_dropout_prob", "hidden_act",
                        "layer_norm_eps")


def _setting(config, key, allowed):
    """config[key], refused with the accepted values when it is not one of them."""
    if config[key] not in allowed:
        raise ValueError(f"{key}={config[key]!r} is not supported by UniSRec; use one of {list(allowed)}")
    return config[key]


class UniSRec(SequentialRecommender):
    STAGES = {"pretrain": "pretrain", "inductive_ft": "finetune", "transductive_ft": "finetune"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_stage = _setting(config, "train_stage", self.STAGES)
        self.hidden_size = config["hidden_size"]
        self.transformer_settings = {key: config[key] for key in TRANSFORMER_SETTINGS}
        self.initializer_range = config["initializer_range"]
        self.temperature = config["temperature"]
        self.n_exps = config["n_exps"]
        self.adaptor_dropout_prob = config["adaptor_dropout_prob"]
        self.adaptor_noise = config["adaptor_noise"]
        self.recompute_tokens = config["recompute_tokens"]

        self.gather_rows = local_rows

        text = dataset.item_features.get("text")
        if text is None:
            raise ValueError("UniSRec reads item text features: set modal_type to text (UniSRec.yaml does) and "
                             "give the text feature file (plm_suffix, plm_size)")
        self.register_buffer("text_features", text.pooled(), persistent=False)  # [N, D]

        d = self.hidden_size
        self.position_embedding = nn.Embedding(self.max_seq_length, d)
        self.item_embedding = (
            nn.Embedding(self.n_items, d, padding_idx=0) if self.train_stage == "transductive_ft" else None
        )
        self.trm_encoder = TransformerEncoder(hidden_size=d, **self.transformer_settings)
        self.LayerNorm = nn.LayerNorm(d, eps=self.transformer_settings["layer_norm_eps"])
        self.dropout = nn.Dropout(self.transformer_settings["hidden_dropout_prob"])
        self.apply(partial(normal_init, std=self.initializer_range))
        # Built after SASRec's init, as in the reference: the adaptor keeps its own (expert weights N(0, 0.02),
        # whitening biases and gate matrices 0, so the gates start uniform).
        self.moe_adaptor = MoEAdaptor(self.n_exps, text.dim, d, self.adaptor_dropout_prob, expert="whitening",
                                      noise=self.adaptor_noise)
        # scores are cosines here (training divides by temperature), so the bias is added in their units
        fine_tuning = self.train_stage != "pretrain"
        self.history_bias = HistoryBias(1.0) if config["history_bias"] and fine_tuning else None
        if self.train_stage == "pretrain":
            self._init_pretrain(config, dataset)

    def _init_pretrain(self, config, dataset):
        """Pre-training's word-dropped text table, view draws, loss weight and false-negative handling."""
        augmented = dataset.item_features.get(AUGMENTED_TEXT)
        if augmented is None:
            raise ValueError("UniSRec pre-training needs the word-dropped text features (`plm_suffix_aug`, set by "
                             "UniSRec.pretrain.yaml): word-drop views read them")
        self.register_buffer("text_aug_features", augmented.pooled(), persistent=False)  # [N, D]
        self.seq_seq_weight = config["lambda"]
        self.duplicates = _setting(config, "dup_mask", DUPLICATE_MODES)
        self.item_drop_ratio = config["item_drop_ratio"]
        self.item_drop_prob = config["item_drop_coefficient"]
        self.item_drop_mode = _setting(config, "item_drop_mode", ITEM_DROP_MODES)
        self.per_sequence_views = _setting(config, "augment_choice", AUGMENT_CHOICES) == "sequence"
        self.gather_negatives = config["gather_negatives"]

    # ---- items -----------------------------------------------------------------------------------
    def item_tokens(self, item_ids, word_drop=None):
        """MoE(text) of the given items: [*item_ids.shape, d]; the padding id gets zeros and no adaptor work,
        so the cost follows the real items. ``word_drop`` (bool, shaped like item_ids; pre-training views)
        reads the word-dropped text where it is True."""
        features = self.text_features[item_ids]  # [..., D]
        if word_drop is not None:
            features = torch.where(word_drop.unsqueeze(-1), self.text_aug_features[item_ids], features)
        real = item_ids > 0
        tokens = features.new_zeros(*item_ids.shape, self.hidden_size)
        tokens[real] = self.moe_adaptor(features[real])
        return tokens

    def candidates(self, tokens, item_ids):
        """Unit item vectors [C, d] of the items' MoE tokens [C, d]: plus the ID embedding in transductive
        fine-tuning, then L2-normalised."""
        if self.item_embedding is not None:
            tokens = tokens + self.id_embedding(item_ids)
        return F.normalize(tokens, dim=-1)

    def id_embedding(self, item_ids):
        """ID embeddings [*item_ids.shape, d]. Items added after training (``add_items``) have no row: they
        read the padding row (zeros), so they are their text alone."""
        trained = item_ids < self.item_embedding.num_embeddings
        return self.item_embedding(item_ids.masked_fill(~trained, 0))

    # ---- sequences -------------------------------------------------------------------------------
    def encode(self, item_seq, item_seq_len, tokens):
        """SASRec over item tokens [B, L, d]: + positions (+ IDs in transductive fine-tuning), LayerNorm,
        dropout, causal Transformer with padding masked; the unit vector at the last real item, [B, d]."""
        position = self.position_embedding(torch.arange(item_seq.shape[1], device=item_seq.device))  # [L, d]
        x = tokens + position
        if self.item_embedding is not None:
            x = x + self.id_embedding(item_seq)
        x = self.dropout(self.LayerNorm(x))
        output = run_or_recompute(self._transformer, self.recompute_tokens, x, self.get_attention_mask(item_seq))
        return F.normalize(self.gather_indexes(output, item_seq_len - 1), dim=-1)

    def _transformer(self, x, attention_mask):
        """The Transformer's last layer output, [B, L, d]: one module call for ``run_or_recompute``."""
        return self.trm_encoder(x, attention_mask, output_all_encoded_layers=False)[-1]

    def forward(self, item_seq, item_seq_len):
        return self.encode(item_seq, item_seq_len, self.item_tokens(item_seq))

    def full_scores(self, interaction):
        """Cosine of every sequence of the batch with every item, [B, N] (column 0 is padding). The adaptor
        runs once over all items, for the candidates and the sequences' items alike."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        all_items = torch.arange(self.n_items, device=item_seq.device)
        tokens = self.item_tokens(all_items)  # [N, d]
        seq_output = self.encode(item_seq, item_seq_len, tokens[item_seq])
        scores = seq_output @ self.candidates(tokens, all_items).T
        return scores if self.history_bias is None else self.history_bias(scores, item_seq)

    # ---- losses ----------------------------------------------------------------------------------
    def calculate_loss(self, interaction):
        """Pre-training: the named contrastive terms; fine-tuning: cross-entropy of cosine / tau over the real
        items."""
        if self.train_stage == "pretrain":
            return self._pretrain_loss(interaction)
        return full_softmax_ce(self.full_scores(interaction) / self.temperature, interaction[self.POS_ITEM_ID])

    def _pretrain_loss(self, interaction):
        """{"seq_item": seq->item InfoNCE, "seq_seq": lambda * seq->seq InfoNCE}; their sum is the loss. The
        sequence is the anchor of both; the candidates are the batch's target items and the batch's views.
        A candidate with the row's own target item is handled per ``dup_mask``."""
        if VIEW_SEQ not in interaction:
            raise KeyError("UniSRec pre-training reads the batch's views: call model.prepare_batch(interaction, "
                           "generator) first (the plugin's trainers do)")
        gather = self.gather_rows if self.gather_negatives else local_rows  # every rank's candidates, or this one's
        target = interaction[self.POS_ITEM_ID]
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # [B, d]
        view_seq = interaction[VIEW_SEQ]
        view_output = self.encode(view_seq, interaction[VIEW_SEQ_LEN],
                                  self.item_tokens(view_seq, interaction[VIEW_WORD_DROP]))
        items, first = gather(F.normalize(self.item_tokens(target), dim=-1))  # [C, d]
        views, _ = gather(view_output)  # [C, d]
        duplicates = duplicate_mask(target, gather(target)[0], first) if self.duplicates != "none" else None
        seq_item = in_batch_infonce(seq_output @ items.T / self.temperature, first, duplicates, self.duplicates)
        seq_seq = in_batch_infonce(seq_output @ views.T / self.temperature, first, duplicates, self.duplicates)
        return {"seq_item": seq_item, "seq_seq": self.seq_seq_weight * seq_seq}

    # ---- evaluation ------------------------------------------------------------------------------
    def predict(self, interaction):
        """Cosine of each sequence with its own candidate item, [B]."""
        item_seq, item_ids = interaction[self.ITEM_SEQ], interaction[self.ITEM_ID]
        candidates = self.candidates(self.item_tokens(item_ids), item_ids)  # [B, d]
        scores = (self.forward(item_seq, interaction[self.ITEM_SEQ_LEN]) * candidates).sum(-1)
        return scores if self.history_bias is None else self.history_bias.paired(scores, item_seq, item_ids)

    def full_sort_predict(self, interaction):
        """Cosine of each sequence with every item, [B, N]."""
        scores = self.full_scores(interaction)
        scores[:, 0] = float("-inf")  # the padding item is never recommended
        return scores

    # ---- trainer hooks ---------------------------------------------------------------------------
    def prepare_batch(self, interaction, generator):
        """Pre-training: every sequence's view (``views.py``), drawn from ``generator``."""
        if self.train_stage != "pretrain":
            return interaction
        return add_view(interaction, self.ITEM_SEQ, self.ITEM_SEQ_LEN, self.item_drop_ratio, self.item_drop_prob,
                        self.per_sequence_views, self.item_drop_mode, generator)

    # ---- serving (protocol: recbole_missrec/serving/__init__.py) ---------------------------------
    def score(self, query, item_ids):
        """Cosines [B, C] of queries [B, d] (``forward``) with candidates item_ids [C]: the columns of
        ``full_sort_predict``."""
        return query @ self.candidates(self.item_tokens(item_ids), item_ids).T

    def history_offset(self):
        """The offset of a row's own history items in ``full_sort_predict`` (``history_bias``), or None."""
        return None if self.history_bias is None else self.history_bias.offset().detach()

    @torch.no_grad()
    def add_items(self, stores):
        """Append items ``n_items ..`` from their text features alone (``stores``: {store name: FeatureStore of
        the new rows, no padding row}; several vectors of an item are averaged, as in training). Returns a note
        for the caller."""
        if self.train_stage == "pretrain":
            raise RuntimeError("add_items needs a fine-tuned UniSRec (train_stage inductive_ft or transductive_ft)")
        text = stores["text"].pooled().to(self.text_features)  # [n, D]
        self.text_features = torch.cat([self.text_features, text])
        n = text.shape[0]
        self.n_items += n
        note = f"{n} new item{'s' * (n != 1)} encoded from their text features"
        if self.item_embedding is not None:
            note += ("; transductive model: new items have no ID embedding, so they read the padding row (zeros) "
                     "as candidates and in histories: their text alone")
        return note

    @torch.no_grad()
    def retrieval_vectors(self, item_ids):
        """{"fused": (unit item vectors [C, d], all usable)}: their inner product with the query is the score
        exactly."""
        return {"fused": (self.candidates(self.item_tokens(item_ids), item_ids),
                          torch.ones_like(item_ids, dtype=torch.bool))}

    def query_vectors(self, query):
        """{"fused": the query [B, d]}."""
        return {"fused": query}

    @torch.no_grad()
    def item_embeddings(self, item_ids):
        """What ``score`` uses, for export: ``vectors`` [C, d], every item's unit vector: MoE(text), plus its ID
        embedding in transductive fine-tuning (none for items added later), L2-normalised.

        score(q, item) = q . vectors[item] (a cosine), q the unit sequence vector (``forward``), plus
        ``history_offset`` (with ``history_bias``) for an item of the row's own history. Training divides it
        by ``temperature``, which does not change the ranking."""
        return {"vectors": self.candidates(self.item_tokens(item_ids), item_ids)}

    # ---- transfer --------------------------------------------------------------------------------
    def load_pretrained(self, state_dict):
        """Copy a UniSRec checkpoint's weights into this model by name: adaptor, position table, Transformer,
        input LayerNorm. The ID table is skipped (it belongs to the checkpoint's items); other dimensions
        raise. Returns {"loaded", "domain_specific", "unused", "new"} (``layers.transfer_weights``)."""
        return transfer_weights(self, state_dict, DOMAIN_SPECIFIC, DIMENSIONS)

    def freeze_backbone(self):
        """Parameter-efficient fine-tuning as the reference's ``fix_enc``: the position table and the
        Transformer keep their pre-trained values; the MoE adaptor, the input LayerNorm and the ID table
        train."""
        for module in (self.position_embedding, self.trm_encoder):
            module.requires_grad_(False)
