"""Recommender: a trained plugin model served from a bundle (``bundle.py``), without a RecBole dataset.

Histories and results are in the dataset's original item tokens. Scoring is exact by default (every
catalogue item, in chunks); ``build_index`` switches to the two-stage path of large catalogues: the
model's ``retrieval_vectors`` in approximate indexes (``ann.py``) gather candidates, the model's exact
``score`` ranks them. New items join with ``add_items`` from their features alone; ``save`` writes them
into the bundle the recommender was loaded from. The model is reached only through the serving protocol
(``recbole_missrec/serving/__init__.py``).
"""
import numpy as np
import torch

from recbole_missrec.data.feature_store import FeatureStore
from recbole_missrec.model.layers import history_hits
from recbole_missrec.serving.bundle import BundleError, read_bundle, update_items

EXACT_CHUNK = 65536  # candidates per exact ``score`` call: bounds the [B, C, ...] intermediates
INDEX_CHUNK = 65536  # items per ``retrieval_vectors`` call while building an index


class ServingConfig(dict):
    """A bundle's plain config; answers None for keys it lacks, as RecBole's Config does."""

    def __missing__(self, key):
        return None


class ServingData:
    """What a plugin model reads from its dataset, from a bundle's tables: the item count and the stores."""

    def __init__(self, item_field, n_items, item_features):
        self.item_field = item_field
        self.n_items = n_items
        self.item_features = item_features

    def num(self, field):
        if field != self.item_field:
            raise KeyError(f"a served model is built from its item tables only; it has no count of {field!r}")
        return self.n_items


def store_rows(store, start, stop=None):
    """Rows ``start:stop`` of a feature store."""
    return FeatureStore(store.table[start:stop], store.slot_mask[start:stop], store.present[start:stop])


def build_model(bundle):
    """(model, note): the bundle's model built at its trained item count with the trained weights, then the
    items added since (the model's ``add_items``; its note, else None)."""
    from recbole_missrec.utils import plugin_models

    manifest = bundle.manifest
    model_class = plugin_models().get(manifest["model"])
    if model_class is None:
        raise BundleError(f"the bundle in {bundle.folder} holds a {manifest['model']} model, which this version of "
                          f"the plugin does not have")
    config = ServingConfig(bundle.config, device="cpu")
    trained = manifest["trained_item_rows"]
    data = ServingData(config["ITEM_ID_FIELD"], trained,
                       {name: store_rows(store, 0, trained) for name, store in bundle.stores.items()})
    model = model_class(config, data)
    try:
        model.load_state_dict(bundle.state_dict)
    except RuntimeError as error:
        raise BundleError(f"{bundle.folder}/{manifest['files']['weights']['path']}: the weights do not fit the "
                          f"{manifest['model']} that the bundle's config and feature tables build "
                          f"({str(error).splitlines()[0]} ...)") from None
    model.eval()
    if len(bundle.tokens) == trained:
        return model, None
    return model, model.add_items({name: store_rows(store, trained) for name, store in bundle.stores.items()})


def new_store(rows, n, dim, name):
    """A FeatureStore of n new items from ``rows``: None (no item has the modality), a FeatureStore, a
    [n, D] array (one vector per item; an all-zero row = missing) or n arrays [S_i, D] (S_i = 0: missing)."""
    if rows is None:
        absent = torch.zeros(n, 1, dtype=torch.bool)
        return FeatureStore(torch.zeros(n, 1, dim), absent, absent[:, 0])
    if isinstance(rows, FeatureStore):
        store = rows
    elif (isinstance(rows, np.ndarray) or torch.is_tensor(rows)) and rows.ndim == 2:
        table = torch.as_tensor(np.asarray(rows, dtype=np.float32)).unsqueeze(1)  # [n, 1, D]
        present = table.ne(0).any(dim=-1)  # [n, 1]
        store = FeatureStore(table, present, present[:, 0])
    else:
        blocks = [np.asarray(block, dtype=np.float32).reshape(-1, dim) for block in rows]
        slots = max([len(block) for block in blocks] + [1])
        table, mask = torch.zeros(len(blocks), slots, dim), torch.zeros(len(blocks), slots, dtype=torch.bool)
        for row, block in enumerate(blocks):
            table[row, :len(block)], mask[row, :len(block)] = torch.from_numpy(block), True
        store = FeatureStore(table, mask, mask.any(dim=1))
    if store.table.shape[0] != n or store.dim != dim:
        raise ValueError(f"features of {name!r}: {tuple(store.table.shape)}, expected {n} items of {dim}-d vectors")
    if not torch.isfinite(store.table).all():
        raise ValueError(f"features of {name!r} hold NaN or inf")
    return store


class Recommender:
    """Recommendations, embeddings and new items for a served model (see the module docstring)."""

    def __init__(self, model, tokens, stores, config=None, bundle=None, notes=()):
        self.model = model.eval().requires_grad_(False)
        self.tokens = [str(token) for token in tokens]
        self.stores = dict(stores)
        # the feature_norm the stores went through, for new rows (see bundle.write_bundle)
        self.normalisation = bundle.manifest["feature_norm"] if bundle else {"mode": "none", "divisors": {}}
        self.config = ServingConfig(config or {})
        self.notes = list(notes)
        self.index = None
        self.k_prime = None
        self._bundle = bundle
        self._added = []  # notes of the additions not yet saved
        self._ids = {token: item for item, token in enumerate(self.tokens) if item > 0}

    @classmethod
    def load(cls, folder, verify=True):
        """The recommender of the bundle in ``folder`` (``verify``: check every file's sha256 first)."""
        bundle = read_bundle(folder, verify)
        model, note = build_model(bundle)
        return cls(model, bundle.tokens, bundle.stores, bundle.config, bundle, [note] if note else [])

    # ---- histories -------------------------------------------------------------------------------
    def _encode(self, histories):
        """(internal ids of each history's known tokens, its last ``max_seq_length`` kept; its unknown tokens)."""
        rows, unknown = [], []
        for history in histories:
            if isinstance(history, str):
                raise TypeError(f"a history is a list of item tokens, not the string {history!r}")
            ids = [self._ids.get(str(token)) for token in history]
            unknown.append([str(token) for token, item in zip(history, ids) if item is None])
            rows.append([item for item in ids if item is not None][-self.model.max_seq_length:])
        return rows, unknown

    def _padded(self, rows):
        """[B, L] ids, right-padded to the batch's longest history (not max_seq_length: the model's cost then
        follows the real items), and the lengths [B]."""
        seq = torch.zeros(len(rows), max(len(ids) for ids in rows), dtype=torch.long)
        for row, ids in enumerate(rows):
            seq[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return seq, torch.tensor([len(ids) for ids in rows])

    @torch.no_grad()
    def _queries(self, rows):
        seq, lengths = self._padded(rows)
        return self.model(seq, lengths), seq

    # ---- recommendations -------------------------------------------------------------------------
    def recommend(self, histories, k=10, exclude_history=False, batch_size=256):
        """Top-``k`` items of every history (a list of item tokens, oldest first).

        Returns one dict per history: ``items`` (tokens, best first), ``scores`` (the model's logits),
        ``unknown`` (tokens of the history the bundle does not know; they are left out of the sequence), and
        ``error`` when no token of the history is known (then no items). ``exclude_history`` leaves the
        history's items out of the results (the benchmarks' evaluation keeps them)."""
        rows, unknown = self._encode(histories)
        results = [{"items": [], "scores": [], "unknown": missing} for missing in unknown]
        usable = [row for row, ids in enumerate(rows) if ids]
        for row in set(range(len(rows))) - set(usable):
            results[row]["error"] = "no known item in the history"
        for start in range(0, len(usable), batch_size):
            part = usable[start:start + batch_size]
            scores, items = self._top_k([rows[row] for row in part], k, exclude_history)
            for row, row_scores, row_items in zip(part, scores.tolist(), items.tolist()):
                kept = [(s, i) for s, i in zip(row_scores, row_items) if s != float("-inf")]
                results[row]["items"] = [self.tokens[i] for _, i in kept]
                results[row]["scores"] = [s for s, _ in kept]
        return results

    @torch.no_grad()
    def _top_k(self, rows, k, exclude_history):
        """(scores [B, k], internal ids [B, k]) of the best candidates of every history."""
        query, seq = self._queries(rows)
        offset = history_offset(self.model)
        if self.index is None:
            chunks = torch.arange(self.model.n_items).split(EXACT_CHUNK)
        else:
            # history items the index returns may drop below the rest (excluded, or a negative offset): widen
            k_prime = self.k_prime + (seq.shape[1] if exclude_history or offset is not None else 0)
            queries = {name: q.float().numpy() for name, q in self.model.query_vectors(query).items()}
            found = torch.from_numpy(self.index.search(queries, k_prime))
            # ... and a positive offset can lift history items the index did not return: score those too
            chunks = [found if offset is None else torch.unique(torch.cat([found, seq[seq > 0]]))]
        best_scores = torch.full((len(rows), 0), float("-inf"))
        best_ids = torch.zeros((len(rows), 0), dtype=torch.long)
        for candidates in chunks:  # sorted ids
            scores = self.model.score(query, candidates).masked_fill(candidates == 0, float("-inf"))  # [B, C]
            scores = adjust_history(scores, candidates, seq, offset, exclude_history)
            scores = torch.cat([best_scores, scores], dim=1)
            scores, positions = scores.topk(min(k, scores.shape[1]), dim=1)
            best_ids = torch.cat([best_ids, candidates.expand(len(rows), -1)], dim=1).gather(1, positions)
            best_scores = scores
        return best_scores, best_ids

    def build_index(self, k_prime=50, kind="ivf", **options):
        """Two-stage scoring from now on: every index's top-``k_prime`` (``kind``: ivf or hnsw, approximate;
        flat, exact), re-scored exactly. ``options``: ``CandidateIndex``'s (nlist, nprobe; hnsw_m,
        ef_construction, ef_search). Returns the index."""
        from recbole_missrec.serving.ann import CandidateIndex

        self.index, self.k_prime = CandidateIndex(kind, **options), k_prime
        self._index_items(torch.arange(1, self.model.n_items))
        return self.index

    def _index_items(self, item_ids):
        """Add items to the index: their retrieval vectors, computed in chunks, in one ``add``."""
        parts = {}
        for chunk in item_ids.split(INDEX_CHUNK):
            for name, (rows, usable) in self.model.retrieval_vectors(chunk).items():
                parts.setdefault(name, []).append((rows[usable].float().numpy(), chunk[usable].numpy()))
        self.index.add({name: (np.concatenate([rows for rows, _ in chunks]), np.concatenate([ids for _, ids in chunks]))
                        for name, chunks in parts.items()})

    # ---- embeddings ------------------------------------------------------------------------------
    def sequence_embeddings(self, histories):
        """{"embeddings": [B, ...] array (the model's ``forward``: the query ``score`` takes), "unknown": the
        unknown tokens of every history}. A history with no known token is an error."""
        rows, unknown = self._encode(histories)
        empty = [row for row, ids in enumerate(rows) if not ids]
        if empty:
            raise ValueError(f"histories {empty[:10]} have no known item token")
        return {"embeddings": self._queries(rows)[0].numpy(), "unknown": unknown}

    def item_embeddings(self):
        """{"tokens": item tokens, plus the model's ``item_embeddings`` of every item as arrays (row i = tokens[i];
        model-level scalars once), plus ``history_offset`` where the model has one (added to the score of an
        item of the row's own history)}. The family's ``item_embeddings`` docstring says how they score."""
        parts = [self.model.item_embeddings(chunk) for chunk in torch.arange(1, self.model.n_items).split(INDEX_CHUNK)]
        out = {"tokens": self.tokens[1:]}
        for name, first in parts[0].items():
            value = first if first.dim() == 0 else torch.cat([part[name] for part in parts])
            out[name] = value.numpy()
        offset = history_offset(self.model)
        if offset is not None:
            out["history_offset"] = offset.numpy()
        return out

    # ---- new items -------------------------------------------------------------------------------
    def add_items(self, tokens, features):
        """Make new items candidates at once, from their features alone; returns the model's note.

        ``features``: {store name: rows} for some of the bundle's stores (``self.stores``); rows as
        :func:`new_store` takes them, one per token, as the feature files hold them (the bundle's
        ``feature_norm`` is applied here). A store left out means the new items lack it; an item
        with no vector in any store is refused. Tokens the catalogue already has are refused: an item's
        features are those the model was trained or extended with (add it under a new token instead)."""
        tokens = [str(token) for token in tokens]
        if not tokens:
            raise ValueError("no items to add")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a token appears twice among the items to add")
        known = [token for token in tokens if token in self._ids]
        if known:
            raise ValueError(f"{len(known)} tokens are already in the catalogue (e.g. {known[:5]}); updating an "
                             f"item's features is not supported: add it under a new token")
        unknown_stores = sorted(set(features) - set(self.stores))
        if unknown_stores:
            raise ValueError(f"features for {unknown_stores}, but the model's feature stores are {list(self.stores)}")
        mode, divisors = self.normalisation["mode"], self.normalisation["divisors"]
        scale = self.normalisation.get("scale", 1.0)  # bundles written before feature_scale existed: 1
        rows = {name: new_store(features.get(name), len(tokens), store.dim, name).normalised(mode, divisors.get(name),
                                                                                             scale)
                for name, store in self.stores.items()}
        bare = ~torch.stack([store.present for store in rows.values()], dim=1).any(dim=1)
        if bare.any():
            bare_tokens = [token for token, none in zip(tokens, bare) if none]
            raise ValueError(f"items without a feature vector in any store: {bare_tokens[:5]}")
        first = self.model.n_items
        note = self.model.add_items(rows)
        self.stores = {name: store.extended(rows[name].table, rows[name].slot_mask)
                       for name, store in self.stores.items()}
        self._ids.update({token: first + offset for offset, token in enumerate(tokens)})
        self.tokens += tokens
        if self.index is not None:
            self._index_items(torch.arange(first, self.model.n_items))
        self.notes.append(note)
        self._added.append(note)
        return note

    def save(self):
        """Write the items added since loading into the bundle they came from (atomically; see
        ``bundle.update_items``). Returns the new manifest."""
        if self._bundle is None:
            raise ValueError("this recommender was not loaded from a bundle; nothing to save into")
        if not self._added:
            return self._bundle.manifest
        added = {"items": len(self.tokens) - self._bundle.manifest["item_rows"], "notes": self._added}
        manifest = update_items(self._bundle, self.tokens, self.stores, added)
        self._bundle = self._bundle._replace(manifest=manifest)
        self._added = []
        return manifest


def history_offset(model):
    """The logit offset the model gives the items of a row's own history (the protocol's optional
    ``history_offset``), or None."""
    method = getattr(model, "history_offset", None)
    return None if method is None else method()


def adjust_history(scores, candidates, seq, offset=None, exclude=False):
    """``scores`` [B, C] of sorted ``candidates`` [C] with the items of each row's history ``seq`` [B, L]
    (0 = padding) moved by the model's ``offset`` (None: not moved) and, with ``exclude``, set to -inf."""
    if offset is None and not exclude:
        return scores
    hits = history_hits(seq, candidates)  # [B, C]
    if offset is not None:
        scores = scores + hits.to(scores.dtype) * offset
    return scores.masked_fill(hits, float("-inf")) if exclude else scores
