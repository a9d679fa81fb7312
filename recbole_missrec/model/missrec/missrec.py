"""MISSRec: multi-modal interest-aware sequence representation (ACM MM 2023), spec §3.

A contextual encoder reads the sequence's interest tokens (global clusters of item-modality tokens, see
``interest.py``); an interest-aware decoder reads the item tokens and attends to them. Candidates are
scored by a user-adaptive fusion of per-modality cosines (``fusion.py``).

One class serves every stage (the reference wrote the forward twice): ``pretrain`` adds the contrastive
losses of spec §5.2 on top of the same ``encode()``, fed an augmented view that is only ids and word-drop
flags (``views.py``); ``inductive_ft``/``transductive_ft`` fine-tune with full-softmax cross-entropy,
optionally from a pre-trained state dict (``load_pretrained``, ``freeze_backbone``).

Hooks the plugin's trainers call: ``on_epoch_start`` (interest discovery), ``prepare_batch`` (pre-training
views) and ``gather_rows`` (in-batch negatives from every data-parallel rank, set by the trainer). The
serving protocol (``recbole_missrec/serving/__init__.py``): ``add_items``, ``retrieval_vectors``,
``query_vectors``, ``item_embeddings``, with ``forward`` and ``score``.
"""
import math
from functools import partial

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_missrec.data.dataset import AUGMENTED_TEXT
from recbole_missrec.model.layers import (
    HistoryBias, MoEAdaptor, duplicate_mask, full_softmax_ce, in_batch_infonce, local_rows, modality_presence,
    normal_init, per_distinct, presence_weights, run_or_recompute, transfer_weights,
)
from recbole_missrec.model.missrec.fusion import fuse_modalities, mix_id_score
from recbole_missrec.model.missrec.interest import (
    METHODS, assign, dpc_knn, kmeans, num_interests, reference_kmeans, unique_per_row,
)
from recbole_missrec.model.missrec.losses import diversity_penalty
from recbole_missrec.model.missrec.views import VIEW_SEQ, VIEW_SEQ_LEN, VIEW_WORD_DROP, add_views

# Weights that belong to one item set: re-discovered (interests) or re-learned (IDs) on a new domain.
DOMAIN_SPECIFIC = ("interest_centroids", "interest_lookup", "interests_ready", "item_embedding.weight")
DIMENSIONS = ("hidden_size, inner_size, n_layers, MAX_ITEM_LIST_LENGTH, or the feature widths plm_size / img_size "
              "of the text and image encoders")
ADD_ITEMS_CHUNK = 65536  # new items whose tokens add_items assigns to interests at a time
SEQ_FUSIONS = {"add": "add", "contextual": "contextual", "stack": "contextual"}
ITEM_FUSIONS = ("dynamic_shared", "static")


def _choice(config, key, allowed):
    value = config[key]
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not supported; use one of {list(allowed)}")
    return value


class MISSRec(SequentialRecommender):
    STAGES = {"pretrain": "pretrain", "inductive_ft": "finetune", "transductive_ft": "finetune"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_stage = _choice(config, "train_stage", self.STAGES)
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.temperature = config["temperature"]
        self.gamma = config["gamma"]
        self.seq_mm_fusion = SEQ_FUSIONS[_choice(config, "seq_mm_fusion", SEQ_FUSIONS)]
        self.item_mm_fusion = _choice(config, "item_mm_fusion", ITEM_FUSIONS)
        self.mask_missing_modality = config["mask_missing_modality"]
        self.reference_penalty = _choice(config, "diversity_penalty", ("masked_mean", "reference")) == "reference"
        self.interest_method = _choice(config, "interest_method", ("kmeans", "dpc_knn", "reference_kmeans", "none"))
        self.kmeans_method = _choice(config, "kmeans_method", METHODS)
        self.kmeans_max_iter = config["kmeans_max_iter"]
        self.kmeans_tol = config["kmeans_tol"]
        self.show_progress = bool(config["show_progress"])
        self.dpc_knn_ratio = config["dpc_knn_ratio"]
        self.dpc_max_tokens = config["dpc_max_tokens"]
        self.new_modality_init = _choice(config, "new_modality_init", ("default", "gate"))
        self.frozen_dropout = config["frozen_dropout"]
        self.adapter = _choice(config, "adapter", ("linear", "moe"))
        if self.adapter == "moe":
            self.n_exps = config["n_exps"]
            self.adaptor_dropout_prob = config["adaptor_dropout_prob"]
            self.adaptor_noise = config["adaptor_noise"]
        self.recompute_tokens = config["recompute_tokens"]
        self.frozen_modules = ()

        self.gather_rows = local_rows

        stores = {name: store for name, store in dataset.item_features.items() if name != AUGMENTED_TEXT}
        self.modalities = list(stores)
        for modality, store in stores.items():
            self.register_buffer(f"{modality}_features", store.pooled(), persistent=False)  # [N, D]
        missing = torch.stack([~store.present for store in stores.values()], dim=1)  # [N, M]
        self.register_buffer("item_present", modality_presence(missing, self.mask_missing_modality), persistent=False)
        if self.train_stage == "pretrain":
            self._init_pretrain(config, dataset)

        d = self.hidden_size
        self.adapters = nn.ModuleDict({m: self._build_adapter(store.dim, d) for m, store in stores.items()})
        self.position_embedding = nn.Embedding(self.max_seq_length, d)
        self.item_embedding = (
            nn.Embedding(self.n_items, d, padding_idx=0) if self.train_stage == "transductive_ft" else None
        )
        self.input_norm = nn.LayerNorm(d, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        n_encoder = max(1, self.n_layers // 2)
        layer = dict(nhead=self.n_heads, dim_feedforward=self.inner_size, dropout=self.hidden_dropout_prob,
                     activation=self.hidden_act, layer_norm_eps=self.layer_norm_eps, batch_first=True)
        # Built here only to switch off nested tensors (a prototype API that warns; interest sets are short
        # anyway); nn.Transformer would build the same encoder, with the same initialisation.
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, **layer), n_encoder,
                                        nn.LayerNorm(d, eps=self.layer_norm_eps), enable_nested_tensor=False)
        self.transformer = nn.Transformer(d_model=d, num_decoder_layers=max(1, self.n_layers - n_encoder),
                                          custom_encoder=encoder, **layer)
        # new_modality_init: gate: a per-modality scale of the decoder's input tokens, closed by load_pretrained
        # for modalities the pre-trained backbone never saw
        gated = self.new_modality_init == "gate"
        self.modality_gate = nn.Parameter(torch.ones(len(self.modalities))) if gated else None
        dynamic = self.item_mm_fusion == "dynamic_shared" and len(self.modalities) > 1
        self.fusion_factor = nn.Parameter(torch.zeros(())) if dynamic else None
        fine_tuning = self.train_stage != "pretrain"  # pre-training ranks in-batch targets, not histories
        self.history_bias = HistoryBias(1 / self.temperature) if config["history_bias"] and fine_tuning else None

        num_tokens = int(self.item_present[1:].sum())
        self.n_interests = (0 if self.interest_method == "none"
                            else num_interests(num_tokens, config["interest_ratio"], config["num_interest"]))
        self.register_buffer("interest_centroids", torch.zeros(self.n_interests + 1, d))
        self.register_buffer("interest_lookup", torch.zeros(self.n_items, len(self.modalities), dtype=torch.long))
        self.register_buffer("interests_ready", torch.tensor(False))

        # N(0, 0.02) as the reference; attention in-projections keep PyTorch's Xavier init and the modality
        # adapters its default (spec §3.1).
        for module in (self.position_embedding, self.item_embedding, self.input_norm, self.transformer):
            if module is not None:
                module.apply(partial(normal_init, std=self.initializer_range))

    def _build_adapter(self, in_dim, d):
        """``linear``: one Linear per modality, as the reference. ``moe``: UniSRec's adaptor (whitening experts,
        noisy gates), an ablation of the item-side capacity: on toys UniSRec, which scores items through it,
        ranks well above MISSRec-inductive, whose items pass through the single Linear."""
        if self.adapter == "linear":
            return nn.Linear(in_dim, d)
        return MoEAdaptor(self.n_exps, in_dim, d, self.adaptor_dropout_prob, expert="whitening", noise=self.adaptor_noise)

    def _init_pretrain(self, config, dataset):
        """Pre-training reads the word-dropped text table for word-drop views and the contrastive weights."""
        augmented = dataset.item_features.get(AUGMENTED_TEXT)
        if "text" not in self.modalities or augmented is None:
            raise ValueError(
                "train_stage=pretrain needs the text modality and its word-dropped table (`plm_suffix_aug`, "
                "set by MISSRec.pretrain.yaml): word drop switches items to that table."
            )
        self.register_buffer("text_aug_features", augmented.pooled(), persistent=False)
        self.seq_seq_weight = config["lambda"]
        self.gather_negatives = config["gather_negatives"]
        self.duplicates = "exclude" if config["mask_false_negatives"] else "none"
        self.item_drop_ratio = config["item_drop_ratio"]
        self.item_drop_prob = config["item_drop_coefficient"]

    def modality_tokens(self, item_ids, word_drop=None):
        """Adapted feature tokens of the given items: [*item_ids.shape, M, d]. ``word_drop`` (bool, shaped
        like item_ids; pre-training only) reads the word-dropped text features where it is True."""
        tokens = []
        for m in self.modalities:
            features = getattr(self, f"{m}_features")[item_ids]
            if word_drop is not None and m == "text":
                features = torch.where(word_drop.unsqueeze(-1), self.text_aug_features[item_ids], features)
            tokens.append(self.adapters[m](features))
        return torch.stack(tokens, dim=-2)

    # ---- trainer hooks ---------------------------------------------------------------------------
    def on_epoch_start(self, epoch, generator):
        """Interest discovery at the start of every training epoch (seeded by the trainer per epoch)."""
        used = self.discover_interests(generator)
        if self.interest_method == "none":
            return f"epoch {epoch}: interest_method none, every sequence attends to the zero token only"
        return f"epoch {epoch} interest discovery: {used} of {self.n_interests} interests used"

    def prepare_batch(self, interaction, generator):
        """Pre-training: the augmented view of every sequence (``views.py``), drawn from ``generator``."""
        if self.train_stage != "pretrain":
            return interaction
        return add_views(interaction, self.ITEM_SEQ, self.ITEM_SEQ_LEN, self.item_drop_ratio, self.item_drop_prob,
                         generator)

    # ---- interests -------------------------------------------------------------------------------
    @torch.no_grad()
    def discover_interests(self, generator=None):
        """Cluster every real item-modality token into K interests; fill centroids and the lookup table.

        Returns the number of interests that received at least one token.

        ``interest_method: none`` (an ablation) leaves every item without an interest: each sequence's memory
        is then the encoded zero token alone, so the decoder's cross-attention adds the same learned vector to
        every position and the interest pathway carries no information about the sequence, while the
        weights stay those of the full model (a pre-trained checkpoint still loads).
        """
        if self.interest_method == "none":
            self.interests_ready.fill_(True)
            return 0
        present = self.item_present[1:]  # [N-1, M]
        points = self._eval_mode_tokens(torch.arange(1, self.n_items, device=present.device))[present]  # [T, d]
        if self.interest_method == "kmeans":
            centroids, labels = kmeans(points, self.n_interests, max_iter=self.kmeans_max_iter, tol=self.kmeans_tol,
                                       generator=generator, method=self.kmeans_method,
                                       show_progress=self.show_progress)
        elif self.interest_method == "reference_kmeans":
            centroids, labels = reference_kmeans(points, self.n_interests, generator=generator)
        else:
            neighbours = math.ceil(points.shape[0] * self.dpc_knn_ratio)
            centroids, labels = dpc_knn(points, self.n_interests, neighbours, self.dpc_max_tokens)
        self.interest_centroids.zero_()
        self.interest_centroids[1:] = centroids
        lookup = torch.zeros_like(self.interest_lookup[1:])
        lookup[present] = labels + 1
        self.interest_lookup.zero_()
        self.interest_lookup[1:] = lookup
        self.interests_ready.fill_(True)
        return int(torch.unique(labels).numel())

    def _eval_mode_tokens(self, item_ids):
        """Modality tokens with the adapters in evaluation mode, as the reference clusters them: an MoE
        adapter's dropout and gate noise would otherwise move every point by a random amount."""
        training = self.adapters.training
        self.adapters.eval()
        try:
            return self.modality_tokens(item_ids)
        finally:
            self.adapters.train(training)

    def _encode_interests(self, item_seq):
        """Contextual encoder over each sequence's distinct interests. Returns memory [B, Q, d] and
        valid [B, Q] (False = padding)."""
        if not bool(self.interests_ready):
            raise RuntimeError(
                "MISSRec has no interests yet: run model.discover_interests() (the plugin's trainers do it at "
                "the start of every epoch) or load a checkpoint saved after training."
            )
        interest_ids = unique_per_row(self.interest_lookup[item_seq].flatten(1))  # [B, Q]
        valid = interest_ids > 0
        valid[:, 0] |= ~valid.any(dim=1)  # a sequence with no interest attends to the zero token
        memory = run_or_recompute(self.transformer.encoder, self.recompute_tokens, self.interest_centroids[interest_ids],
                                  src_key_padding_mask=~valid)
        return memory, valid

    # ---- sequence side ---------------------------------------------------------------------------
    def _decoder_input(self, item_seq, present, word_drop=None, item_tokens=None):
        """Item tokens for the decoder and their key-padding mask.

        add: one token per position, the sum of its real modality tokens. contextual: one token per
        (modality, position), laid out modality-major [B, M*L, d]. ``item_tokens`` [N, M, d]: every item's
        modality tokens, already computed (full ranking); else the adapters run on the sequence's items.
        """
        tokens = item_tokens[item_seq] if item_tokens is not None else self._sequence_tokens(item_seq, word_drop)
        tokens = tokens * present.unsqueeze(-1)  # [B, L, M, d]
        if self.modality_gate is not None:
            tokens = tokens * self.modality_gate.unsqueeze(-1)
        position = self.position_embedding(torch.arange(item_seq.shape[1], device=item_seq.device))
        extra = position.unsqueeze(0)  # [1, L, d]
        if self.item_embedding is not None:
            extra = extra + self.item_embedding(self._id_rows(item_seq))
        padding = item_seq == 0  # [B, L]
        if self.seq_mm_fusion == "add":
            tokens = tokens.sum(dim=-2) + extra
        else:
            tokens = (tokens + extra.unsqueeze(-2)).transpose(1, 2).flatten(1, 2)
            padding = (padding.unsqueeze(-1) | ~present).transpose(1, 2).flatten(1)
        return self.dropout(self.input_norm(tokens)), padding

    def _sequence_tokens(self, item_seq, word_drop=None):
        """Modality tokens of every position [B, L, M, d], the adapters run once per distinct (item, word drop)
        pair of the batch. Why not per position: padding and repeated items would run the adapters B x L times;
        with the MoE adapter a pre-training batch (4,096 x 50) then builds [8, 204,800, 384] expert inputs,
        2.5 GB each, and the run outgrew this machine (README, Cost). As in full ranking (``item_tokens``), an
        item's positions share its token, and its dropout draw."""
        if word_drop is None:
            return per_distinct(item_seq, self.modality_tokens)
        keys = item_seq + self.n_items * word_drop.long()  # one key per (item, word drop) pair
        return per_distinct(keys, lambda k: self.modality_tokens(k % self.n_items, k >= self.n_items))

    def _read_out(self, output, item_seq_len, present_last):
        """Decoder output at the last real item; in contextual mode the mean over that item's modalities."""
        if self.seq_mm_fusion == "add":
            return self.gather_indexes(output, item_seq_len - 1)
        per_modality = output.unflatten(1, (len(self.modalities), -1))  # [B, M, L, d]
        index = (item_seq_len - 1).view(-1, 1, 1, 1).expand(-1, per_modality.shape[1], 1, output.shape[-1])
        last = per_modality.gather(2, index).squeeze(2)  # [B, M, d]
        weights = present_last.to(last.dtype).unsqueeze(-1)
        return (last * weights).sum(dim=1) / weights.sum(dim=1)

    def encode(self, item_seq, item_seq_len, word_drop=None, item_tokens=None):
        """Returns the L2-normalised sequence vector [B, d], the interest memory [B, Q, d], its mask.

        ``word_drop`` [B, L] bool (pre-training views): positions that read the word-dropped text features.
        ``item_tokens`` [N, M, d]: every item's modality tokens when the caller has computed them.
        """
        memory, valid = self._encode_interests(item_seq)
        present = self.item_present[item_seq]  # [B, L, M]
        tokens, padding = self._decoder_input(item_seq, present, word_drop, item_tokens)
        output = run_or_recompute(self.transformer.decoder, self.recompute_tokens, tokens, memory,
                                  tgt_key_padding_mask=padding, memory_key_padding_mask=~valid)
        present_last = present.gather(1, (item_seq_len - 1).view(-1, 1, 1).expand(-1, 1, present.shape[-1]))
        seq_output = self._read_out(output, item_seq_len, present_last.squeeze(1))
        return F.normalize(seq_output, dim=-1), memory, valid

    def forward(self, item_seq, item_seq_len):
        return self.encode(item_seq, item_seq_len)[0]

    # ---- item side -------------------------------------------------------------------------------
    def candidate_tokens(self, item_ids):
        """L2-normalised modality tokens of candidate items: [*item_ids.shape, M, d]."""
        return F.normalize(self.modality_tokens(item_ids), dim=-1)

    def modal_score(self, seq_output, candidates, present, paired=False):
        """Fused modality cosine of sequences [B, d] and candidate tokens [C, M, d] (present [C, M]) -> [B, C];
        paired=True: candidates [B, M, d], one per sequence -> [B]. The cosines are laid out modality-first,
        so the fusion works on contiguous [B, C] slabs (a softmax over a last axis of 2 costs more than
        the matrix products)."""
        if paired:
            cos = torch.einsum("bd,bmd->mb", seq_output, candidates)  # [M, B]
            return fuse_modalities(cos, present.T, self.fusion_factor)
        cos = torch.matmul(seq_output, candidates.permute(1, 2, 0))  # [M, B, C]
        return fuse_modalities(cos, present.T.unsqueeze(1), self.fusion_factor)

    def score(self, seq_output, item_ids, paired=False, tokens=None):
        """Logits of candidates: item_ids [C] shared by every sequence -> [B, C]; paired=True: item_ids [B]
        one candidate per sequence -> [B]. ``tokens``: the candidates' modality tokens if already computed."""
        candidates = F.normalize(tokens, dim=-1) if tokens is not None else self.candidate_tokens(item_ids)
        logits = self.modal_score(seq_output, candidates, self.item_present[item_ids], paired)
        if self.item_embedding is not None:
            ids = self._id_vectors(item_ids)
            id_cosine = (seq_output * ids).sum(-1) if paired else seq_output @ ids.T
            # Items added after training (add_items) have no ID embedding: their ID cosine is 0 in the same
            # mix, so they stay on the trained items' scale (the modality score alone would outrank them).
            logits = mix_id_score(id_cosine, logits)
        return logits / self.temperature

    def _has_id(self, item_ids):
        """Whether items have a trained ID embedding (False for items added by ``add_items``)."""
        return item_ids < self.item_embedding.num_embeddings

    def _id_rows(self, item_ids):
        """Rows of the ID table; items without one read the padding row (zeros)."""
        return item_ids.masked_fill(~self._has_id(item_ids), 0)

    def _id_vectors(self, item_ids):
        """L2-normalised ID embeddings [*item_ids.shape, d]; zeros for items without one."""
        return F.normalize(self.item_embedding(self._id_rows(item_ids)), dim=-1)

    def _score_all_items(self, interaction):
        """Logits of every item [B, N], the interest memory and its mask. The adapters run once over all
        items, for the candidates and the sequences' items alike, instead of once more per position."""
        all_items = torch.arange(self.n_items, device=self.position_embedding.weight.device)
        tokens = self.modality_tokens(all_items)  # [N, M, d]
        seq_output, memory, valid = self.encode(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], item_tokens=tokens
        )
        logits = self.score(seq_output, all_items, tokens=tokens)
        if self.history_bias is not None:
            logits = self.history_bias(logits, interaction[self.ITEM_SEQ])
        return logits, memory, valid

    def calculate_loss(self, interaction):
        if self.train_stage == "pretrain":
            return self._pretrain_loss(interaction)
        logits, memory, valid = self._score_all_items(interaction)
        loss = full_softmax_ce(logits, interaction[self.POS_ITEM_ID])
        return loss + self.gamma * diversity_penalty(memory, valid, reference=self.reference_penalty)

    def _gather(self, x):
        """Rows of every data-parallel rank when in-batch negatives are gathered (and this rank's offset),
        else (x, 0)."""
        return self.gather_rows(x) if self.gather_negatives else (x, 0)

    def _pretrain_loss(self, interaction):
        """Seq->item contrast with dynamic fusion, seq->seq contrast between the two views, diversity penalty
        on both (spec §5.2). Returns the three weighted terms by name; their sum is the loss."""
        target = interaction[self.POS_ITEM_ID]
        seq_output, memory, valid = self.encode(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        view_output, view_memory, view_valid = self.encode(
            interaction[VIEW_SEQ], interaction[VIEW_SEQ_LEN], interaction[VIEW_WORD_DROP]
        )
        candidates, first = self._gather(self.candidate_tokens(target))  # [C, M, d]
        present, _ = self._gather(self.item_present[target])  # [C, M]
        logits = self.modal_score(seq_output, candidates, present) / self.temperature  # [B, C]
        duplicates = duplicate_mask(target, self._gather(target)[0], first) if self.duplicates != "none" else None
        views, _ = self._gather(view_output)  # [C, d]
        seq_seq = in_batch_infonce(seq_output @ views.T / self.temperature, first)
        penalty = diversity_penalty(memory, valid, reference=self.reference_penalty) + diversity_penalty(
            view_memory, view_valid, reference=self.reference_penalty
        )
        return {
            "seq_item": in_batch_infonce(logits, first, duplicates, self.duplicates),
            "seq_seq": self.seq_seq_weight * seq_seq,
            "penalty": self.gamma * penalty,
        }

    def predict(self, interaction):
        item_seq, item_ids = interaction[self.ITEM_SEQ], interaction[self.ITEM_ID]
        logits = self.score(self.forward(item_seq, interaction[self.ITEM_SEQ_LEN]), item_ids, paired=True)
        return logits if self.history_bias is None else self.history_bias.paired(logits, item_seq, item_ids)

    def full_sort_predict(self, interaction):
        return self._score_all_items(interaction)[0]

    # ---- serving (protocol: recbole_missrec/serving/__init__.py) ---------------------------------
    @torch.no_grad()
    def add_items(self, stores):
        """Append items ``n_items ..`` from their features alone (``stores``: {store name: FeatureStore of
        the new rows, no padding row}), so that they are candidates at once. Each new item-modality token
        joins its nearest saved interest (the k-means metric), so new items in a history feed the
        contextual encoder too; interests are not re-discovered. Returns a note for the caller."""
        if self.train_stage == "pretrain" or not bool(self.interests_ready):
            raise RuntimeError("add_items needs a fine-tuned MISSRec whose interests were discovered in training")
        missing = torch.stack([~stores[m].present for m in self.modalities], dim=1).to(self.item_present.device)
        present = modality_presence(missing, self.mask_missing_modality)  # [n, M]
        for m in self.modalities:
            features = getattr(self, f"{m}_features")
            setattr(self, f"{m}_features", torch.cat([features, stores[m].pooled().to(features)]))
        self.item_present = torch.cat([self.item_present, present])
        first, n = self.n_items, present.shape[0]
        self.n_items += n
        lookup = torch.zeros_like(present, dtype=torch.long)  # [n, M]
        # chunks bound the [chunk, M, d] tokens; with interest_method none there is no interest to join
        for start in range(0, n if self.n_interests else 0, ADD_ITEMS_CHUNK):
            rows = slice(start, start + ADD_ITEMS_CHUNK)
            ids = torch.arange(first + start, first + min(n, start + ADD_ITEMS_CHUNK), device=present.device)
            labels, _ = assign(self._eval_mode_tokens(ids)[present[rows]], self.interest_centroids[1:])
            lookup[rows][present[rows]] = labels + 1
        self.interest_lookup = torch.cat([self.interest_lookup, lookup])
        joined = torch.unique(lookup[lookup > 0]).numel()
        note = f"{n} new item{'s' * (n != 1)}: {int(present.sum())} item-modality tokens " + (
            f"joined {joined} of the {self.n_interests} saved interests (nearest centroid)" if self.n_interests
            else "join no interest (interest_method none)")
        if self.item_embedding is not None:
            note += ("; transductive model: new items have no ID embedding, so their ID cosine is 0 in the score "
                     "(id + 2 * modalities) / 3, the trained items' scale, and they add no ID vector in a history")
        return note

    def history_offset(self):
        """The logit offset of a row's own history items in ``full_sort_predict`` (``history_bias``), or None."""
        return None if self.history_bias is None else self.history_bias.offset().detach()

    @torch.no_grad()
    def retrieval_vectors(self, item_ids):
        """{index name: (vectors [C, d], usable [C] bool)} whose inner products with the sequence vector bound
        ``score`` (times the temperature), so that an index's top items hold the top-scoring ones.

        ``fused``: the mean of an item's normalised present modality tokens (transductive: ``(id + 2 * mean) /
        3``, id = 0 for items added after training). Its inner product is the score under static fusion or f = 0, and an upper
        bound with f < 0 (the softmax then leans on the smaller cosine). With f > 0 the score can exceed it,
        up to the largest single-modality term: then one more index per modality (its token, mixed with the
        ID as above) bounds it from above."""
        tokens = self.candidate_tokens(item_ids)  # [C, M, d]
        present = self.item_present[item_ids]  # [C, M]
        weights = presence_weights(present, tokens.dtype).unsqueeze(-1)  # [C, M, 1]
        vectors = {"fused": ((tokens * weights).sum(1), present.any(1))}  # [C, d], [C]
        for i, m in enumerate(self._retrieval_names()[1:]):
            vectors[m] = (tokens[:, i], present[:, i])
        if self.item_embedding is not None:
            ids = self._id_vectors(item_ids)  # zeros for items added after training
            vectors = {name: (mix_id_score(ids, term), usable) for name, (term, usable) in vectors.items()}
        return vectors

    def query_vectors(self, seq_output):
        """{index name: [B, d]}: every index is searched with the sequence vector."""
        return {name: seq_output for name in self._retrieval_names()}

    def _retrieval_names(self):
        """``fused``, plus the modalities when dynamic fusion with f > 0 can exceed it (``retrieval_vectors``)."""
        by_modality = self.fusion_factor is not None and float(self.fusion_factor) > 0
        return ["fused"] + (self.modalities if by_modality else [])

    @torch.no_grad()
    def item_embeddings(self, item_ids):
        """What ``score`` uses, for export: ``modality_tokens`` [C, M, d] (normalised, modality order
        ``self.modalities``), ``present`` [C, M], ``fusion_factor`` f (0-d; absent with static fusion),
        ``temperature``; transductive also ``id`` [C, d] (normalised) and ``has_id`` [C]. With ``history_bias``
        the export also holds ``history_offset`` (0-d), added to the score of an item of the row's own history.

        score(s, item) = fused / temperature with cos_m = s . modality_tokens[m] over present m, weights
        softmax(f * cos) (static: the mean), fused = sum_m w_m cos_m; transductive: fused = (s . id + 2 * fused) / 3,
        with id = 0 for items added after training (``has_id`` False). ``s`` is the L2-normalised sequence vector (``forward``)."""
        out = {"modality_tokens": self.candidate_tokens(item_ids), "present": self.item_present[item_ids],
               "temperature": torch.tensor(self.temperature)}
        if self.fusion_factor is not None:
            out["fusion_factor"] = self.fusion_factor.detach()
        if self.item_embedding is not None:
            out["id"], out["has_id"] = self._id_vectors(item_ids), self._has_id(item_ids)
        return out

    # ---- transfer --------------------------------------------------------------------------------
    def load_pretrained(self, state_dict):
        """Copy a pre-trained state dict's weights into this model by name.

        Interest buffers and ID embeddings belong to the pre-training item set: they are skipped (interests
        are re-discovered on this domain, so they are not listed as new); so is an adapter of another kind
        (listed as unused, this model's as new). Other dimensions raise. Returns
        {"loaded", "domain_specific", "unused", "new"}: lists of names (``layers.transfer_weights``).
        """
        other_kind = self._adapters_of_another_kind(state_dict)
        kept = {name: value for name, value in state_dict.items() if name not in other_kind}
        report = transfer_weights(self, kept, DOMAIN_SPECIFIC, DIMENSIONS)
        report["new"] = [name for name in report["new"] if not name.startswith("interest")]
        report["unused"] = sorted(report["unused"] + list(other_kind))
        if self.modality_gate is not None:
            self._close_new_modality_gates(state_dict)
        return report

    def _adapters_of_another_kind(self, state_dict):
        """A checkpoint's adapter weights of a modality whose adapter is of another kind than this model's
        (``adapter: linear`` pre-trained, ``moe`` fine-tuned, or the reverse): that adapter starts afresh
        here. Both kinds name a weight ``bias``, so matching by name alone would mix the two, and a shape
        check would report the change as a model of other dimensions."""
        other_kind = set()
        for modality, adapter in self.adapters.items():
            prefix = f"adapters.{modality}."
            theirs = {name for name in state_dict if name.startswith(prefix)}
            if theirs and theirs != {prefix + name for name in adapter.state_dict()}:
                other_kind |= theirs
        return other_kind

    @torch.no_grad()
    def _close_new_modality_gates(self, state_dict):
        """A modality the pre-trained backbone never saw enters the decoder's input through a gate that starts
        at 0 and is learned, instead of adding its fresh adapter's random tokens (often the larger term) at
        once. The adapter itself keeps its default initialisation, so that its tokens score candidates from
        the first step: an adapter started at zero would give the cosine of a zero vector, whose gradient
        (1 / eps) saturates Adam's second moment and leaves the adapter untrained for thousands of steps."""
        for index, modality in enumerate(self.modalities):
            if not any(name.startswith(f"adapters.{modality}.") for name in state_dict):
                self.modality_gate[index] = 0.0

    def freeze_backbone(self):
        """Parameter-efficient transfer (spec §6.2): the position table and the whole encoder-decoder keep
        their pre-trained values; adapters, the input LayerNorm, the fusion factor and ID embeddings train."""
        self.frozen_modules = (self.position_embedding, self.transformer)
        for module in self.frozen_modules:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode=True):
        """``frozen_dropout: False`` keeps the frozen backbone in evaluation mode (no dropout) while the rest
        trains: dropout in layers that do not learn only adds noise to what the trainable ones see."""
        super().train(mode)
        if not self.frozen_dropout:
            for module in self.frozen_modules:
                module.eval()
        return self
