"""Candidate gathering for large catalogues: per-index approximate inner-product top-k' with faiss.

The model's exact score re-ranks the union of every index's top-k' (``Recommender``), so the approximation
can miss items but never misorders the ones it finds. The indexes are the model's ``retrieval_vectors``,
whose inner products bound its score (MISSRec: the mean of an item's modality tokens, which is its score
under static fusion; per modality too when dynamic fusion can exceed that mean).

faiss (faiss-cpu) rather than usearch or hnswlib: binary wheels for every platform the plugin runs on
(hnswlib is source-only on the package index), inverted-file, graph and exact indexes behind one API (a test
swaps the approximate index for the exact one), incremental ``add`` with ids of our own for ``add_items``,
and maintained by Meta with a long record.

The default is the inverted file (``ivf``): k-means cells over the vectors, ``nprobe`` of them searched. On
1M items grown from the Scientific_mm_subset CLIP features (benchmarks/serving.py) it gave recall@10 0.989
with 2048 cells and nprobe 64 (7 ms CPU per history end to end), where an HNSW graph (32 links,
efConstruction 80) gave 0.84 at efSearch 256 and stalled near 0.94 even at efSearch 1024 (300k items): the
catalogue's dense clusters of near-duplicates defeat its greedy search. The IVF also builds 4x faster.
"""
import math

import numpy as np

KINDS = ("ivf", "hnsw", "flat")
TRAIN_PER_CELL = 40  # k-means training vectors per IVF cell (faiss asks for at least 39)


def default_cells(n):
    """IVF cells for n vectors: about 2 sqrt(n), a power of two, with TRAIN_PER_CELL vectors each at least."""
    cells = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(n))))
    return max(1, min(cells, n // TRAIN_PER_CELL))


class CandidateIndex:
    """One faiss index per name: ``ivf`` (inverted file: ``nlist`` k-means cells, trained on the first
    vectors added, ``nprobe`` searched), ``hnsw`` (graph: ``hnsw_m`` links, ``ef_construction``,
    ``ef_search``) or ``flat`` (exhaustive, exact). ``nlist=None``: :func:`default_cells`."""

    def __init__(self, kind="ivf", nlist=None, nprobe=64, hnsw_m=32, ef_construction=80, ef_search=256):
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r} is not supported; use one of {list(KINDS)}")
        self.kind = kind
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.indexes = {}  # {name: faiss index with our ids}
        self.ids = {}  # {name: [int64 arrays]}: every id added, for the exhaustive case k' >= size

    def _new_index(self, rows):
        """An empty index of this kind for vectors like ``rows`` (an IVF is trained on a sample of them)."""
        try:
            import faiss
        except ImportError:
            raise ImportError("the two-stage search needs faiss: pip install 'recbole-missrec[serving]'") from None
        dim = rows.shape[1]
        if self.kind == "flat":
            return faiss.IndexIDMap(faiss.IndexFlatIP(dim))  # faiss's wrapper keeps the inner index alive
        if self.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.ef_construction
            return faiss.IndexIDMap(graph)
        cells = self.nlist or default_cells(len(rows))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).permutation(len(rows))[:TRAIN_PER_CELL * cells]
        index.train(rows[np.sort(sample)])
        return index

    def add(self, vectors):
        """``vectors``: {name: (float32 [C, d], int64 ids [C])}. The first call for a name creates its
        index (an IVF learns its cells from these vectors: pass the whole catalogue at once)."""
        for name, (rows, ids) in vectors.items():
            if not len(ids):
                continue
            rows = np.ascontiguousarray(rows, dtype=np.float32)
            if name not in self.indexes:
                self.indexes[name] = self._new_index(rows)
                self.ids[name] = []
            self.indexes[name].add_with_ids(rows, np.ascontiguousarray(ids, dtype=np.int64))
            self.ids[name].append(np.asarray(ids, dtype=np.int64))

    def size(self, name):
        return self.indexes[name].ntotal

    def _set_effort(self, index, k_prime):
        import faiss

        if self.kind == "ivf":
            index.nprobe = self.nprobe
        elif self.kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = max(self.ef_search, k_prime)

    def search(self, queries, k_prime):
        """Sorted unique ids of the union of every index's top-``k_prime`` for every query row.

        ``queries``: {name: float32 [B, d]}. An index with at most k' items contributes all of them (the
        exact answer)."""
        found = []
        for name, query in queries.items():
            index = self.indexes.get(name)
            if index is None:
                continue
            if k_prime >= index.ntotal:
                found.extend(self.ids[name])
                continue
            self._set_effort(index, k_prime)
            _, labels = index.search(np.ascontiguousarray(query, dtype=np.float32), k_prime)
            found.append(labels[labels >= 0])
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    def memory_bytes(self):
        """Bytes the indexes hold: vectors and ids, plus the graph links (hnsw) or cell centroids (ivf)."""
        import faiss

        total = 0
        for index in self.indexes.values():
            total += index.ntotal * (index.d * 4 + 8)
            if self.kind == "ivf":
                total += index.nlist * index.d * 4
            elif self.kind == "hnsw":
                hnsw = faiss.downcast_index(index.index).hnsw
                total += hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
        return total
