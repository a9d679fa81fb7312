"""Candidate gathering for large catalogues: per-index approximate inner-product top-k' with faiss.

The model's exact score re-ranks the union of every index's top-k' (``Recommender``), so the approximation
can miss items but never misorders the ones it finds. The indexes are the model's ``retrieval_vectors``,
whose inner products bound its score (MISSRec: the mean of an item's modality tokens, which is its score
under static fusion; per modality too when dynamic fusion can exceed that mean).

faiss (faiss-cpu) rather than usearch or hnswlib: binary wheels for every platform the plugin runs on
(hnswlib is source-only on the package index), graph (HNSW) and exact (flat) indexes behind one API, so
that a test can swap the approximate index for the exact one, incremental ``add`` for ``add_items``, ids
of our own (``IndexIDMap``), and maintained by Meta with a long record.
"""
import numpy as np

KINDS = ("hnsw", "flat")


class CandidateIndex:
    """One faiss index per name (``hnsw``: graph, approximate; ``flat``: exhaustive, exact).

    ``hnsw_m`` neighbours per node and ``ef_construction`` trade build time and memory for graph quality;
    ``ef_search`` (at least k') trades query time for recall.
    """

    def __init__(self, kind="hnsw", hnsw_m=32, ef_construction=80, ef_search=256):
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r} is not supported; use one of {list(KINDS)}")
        self.kind = kind
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.indexes = {}  # {name: faiss.IndexIDMap}
        self.graphs = {}  # {name: the IndexHNSWFlat inside} (hnsw only)
        self.ids = {}  # {name: [int64 arrays]}: every id added, for the exhaustive case k' >= size

    def _new_index(self, name, dim):
        try:
            import faiss
        except ImportError:
            raise ImportError("the two-stage search needs faiss: pip install 'recbole-missrec[serving]'") from None

        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.ef_construction
            self.graphs[name] = inner
        else:
            inner = faiss.IndexFlatIP(dim)
        return faiss.IndexIDMap(inner)  # faiss's wrapper keeps a reference to ``inner``

    def add(self, vectors):
        """``vectors``: {name: (float32 [C, d], int64 ids [C])}."""
        for name, (rows, ids) in vectors.items():
            rows = np.ascontiguousarray(rows, dtype=np.float32)
            if name not in self.indexes:
                self.indexes[name] = self._new_index(name, rows.shape[1])
                self.ids[name] = []
            if len(ids):
                self.indexes[name].add_with_ids(rows, np.ascontiguousarray(ids, dtype=np.int64))
                self.ids[name].append(np.asarray(ids, dtype=np.int64))

    def size(self, name):
        return self.indexes[name].ntotal

    def search(self, queries, k_prime):
        """Sorted unique ids of the union of every index's top-``k_prime`` for every query row.

        ``queries``: {name: float32 [B, d]}. An index with at most k' items contributes all of them (the
        exact answer)."""
        found = []
        for name, query in queries.items():
            index = self.indexes.get(name)
            if index is None or index.ntotal == 0:
                continue
            if k_prime >= index.ntotal:
                found.extend(self.ids[name])
                continue
            if name in self.graphs:
                self.graphs[name].hnsw.efSearch = max(self.ef_search, k_prime)
            _, labels = index.search(np.ascontiguousarray(query, dtype=np.float32), k_prime)
            found.append(labels[labels >= 0])
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    def memory_bytes(self):
        """Bytes the indexes hold: vectors, graph links and id maps (what ``add`` allocated)."""
        total = 0
        for name, index in self.indexes.items():
            total += index.ntotal * (index.d * 4 + 8)
            graph = self.graphs.get(name)
            if graph is not None:
                hnsw = graph.hnsw
                total += hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
        return total
