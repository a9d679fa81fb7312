"""Serving: a trained plugin model as a self-contained bundle (``bundle.py``), a :class:`Recommender` over it
(``recommender.py``) and a two-stage candidate search for large catalogues (``ann.py``).

The serving core knows no model family. It builds the model as training did, ``model_class(config,
dataset)``, from the bundle's plain config and an object with ``num(item field)`` and ``item_features``
({store name: FeatureStore}), loads the trained weights, and talks to the model through this protocol
(every family implements it: ``model/missrec/missrec.py``, ``model/msm4sr/msm4sr.py``,
``model/unisrec/unisrec.py``):

``forward(item_seq [B, L], item_seq_len [B]) -> query [B, ...]``
    RecBole's: the sequence representation; the core passes it back to ``score`` and ``query_vectors``
    and hands it out as ``sequence_embeddings``. Histories are right-padded to the batch's longest one
    (L <= ``max_seq_length``), as RecBole's positions allow.
``score(query, item_ids [C]) -> [B, C]``
    exact scores of the given candidates, equal to ``full_sort_predict``'s columns for them.
``history_offset() -> 0-d tensor | None`` (optional)
    a logit offset ``full_sort_predict`` adds to the items of a row's own history (``history_bias`` of
    MISSRec, UniSRec and MSM4SR); the core adds it to ``score``'s columns of those items (and exports it as
    ``history_offset`` beside ``item_embeddings``). Absent or None: no offset.
``add_items(stores) -> str | None``
    make items ``n_items .. n_items + n - 1`` candidates at once from their features alone. ``stores``:
    {store name: FeatureStore of the n new rows, no padding row}, one per store of the bundle (an item
    without a modality has ``present`` False there). The model grows whatever it keeps per item, adds ``n``
    to ``n_items`` and returns a note saying how new items are treated (e.g. a missing ID term).
``retrieval_vectors(item_ids [C]) -> {index name: (vectors [C, d], usable [C] bool)}``
    per index, the vectors whose inner product with ``query_vectors`` gathers candidates, and which of the
    items belong in that index. Every item a top exact score can go to must rank high in at least one
    index by inner product (the two-stage path re-scores the union exactly).
``query_vectors(query) -> {index name: [B, d]}``
    the query of each index.
``item_embeddings(item_ids [C]) -> {name: tensor}``
    what ``score`` uses per item (and any model-level scalars it needs), documented by the family, for
    use outside the plugin.
"""
