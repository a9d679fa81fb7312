"""Serving figures: the two-stage path (approximate candidates per index, exact re-scoring) against exact
scoring, on catalogues of 100k and 1M items, one thread.

    python benchmarks/serving.py --bundle BUNDLE          # a bundle exported from a trained model
    python benchmarks/serving.py                          # random weights over the real CLIP features
    python benchmarks/serving.py --quick --out /tmp/s     # tiny sizes, random weights and features (tests)

Model: the bundle's (``--bundle``: e.g. MISSRec inductive_ft trained one epoch on Scientific_mm_subset), else
a MISSRec with random weights at hidden size 300 over the real rows of the Scientific_mm_subset CLIP text
and image features in ../shared/data. Catalogue: the model's items plus new
items added through ``Recommender.add_items`` (250k per call) up to N. A new item's rows are a real item's,
mixed with a second real item's (weight ~ U(0, mix)) plus Gaussian noise (noise x the per-dimension std of the
real rows), text and image from the same pair: the catalogue keeps the real features' structure (clusters,
text-image alignment) at N items, rather than uniform noise. Queries: the test histories of the bundle's
dataset when its files are where the bundle says, else random histories of the model's items.

Per size: seconds to add the items and to build the index, index memory, exact scoring's time per history
(batched, as in evaluation: one history alone pays the adapters over the whole catalogue), and for each index
kind and (k', search effort) of the sweep the p50/p99 wall and CPU latency of one history's top-10 (one
``Recommender.recommend`` call per history) and its recall@10 against exact scoring. A size whose estimated
memory exceeds 70% of what the machine has available is skipped and says so. Writes <out>/serving.json and
serving.md atomically.
"""
import argparse
import csv
import gc
import os
import platform
import time
from time import perf_counter

import numpy as np

from recbole_missrec.atomic import atomic_open, atomic_write_json
from scaling import available_mb, scoring_model, table

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data", "Scientific_mm_subset")
DEFAULT_FEATURES = {"text": os.path.join(SHARED, "Scientific_mm_subset.feat1CLS"),
                    "img": os.path.join(SHARED, "Scientific_mm_subset.feat3CLS")}
# Per index kind: its build options and the (k', search effort) points measured; the effort is the IVF's
# nprobe (cells searched) or the HNSW's efSearch.
FULL = {"sizes": [100_000, 1_000_000], "queries": 500, "exact_batch": 100, "k": 10, "mix": 0.3, "noise": 0.3,
        "feature_dim": 512,
        "indexes": {"ivf": {"options": {}, "sweep": [[50, 32], [50, 64], [50, 128]]},
                    "hnsw": {"options": {"hnsw_m": 32, "ef_construction": 80}, "sweep": [[50, 256]]}}}
QUICK = dict(FULL, sizes=[3000], queries=30, feature_dim=32,
             indexes={"ivf": {"options": {}, "sweep": [[50, 32]]}, "hnsw": {"options": {}, "sweep": [[50, 128]]}})
EFFORT = {"ivf": "nprobe", "hnsw": "ef_search"}
GENERATE_CHUNK = 100_000
ADD_CHUNK = 250_000  # new items per add_items call


def cpu_name():
    with open("/proc/cpuinfo") as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    return names[0] if names else platform.processor()


def synthetic_features(base, n, mix, noise, seed=0):
    """{store: float32 [n, D]}: real rows mixed pairwise plus noise (see the module docstring)."""
    rng = np.random.default_rng(seed)
    count = len(next(iter(base.values())))
    std = {name: rows.std(axis=0) for name, rows in base.items()}
    out = {name: np.empty((n, rows.shape[1]), dtype=np.float32) for name, rows in base.items()}
    for start in range(0, n, GENERATE_CHUNK):
        m = min(GENERATE_CHUNK, n - start)
        first, second = rng.integers(0, count, m), rng.integers(0, count, m)
        weight = rng.uniform(0, mix, (m, 1)).astype(np.float32)
        for name, rows in base.items():
            jitter = rng.standard_normal((m, rows.shape[1]), dtype=np.float32) * (noise * std[name])
            out[name][start:start + m] = (1 - weight) * rows[first] + weight * rows[second] + jitter
    return out


class Source:
    """A fresh recommender per size, the real rows new items are drawn from, and the query histories."""

    def __init__(self, args, settings):
        self.bundle = args.bundle
        self.settings = settings
        recommender = self.recommender()
        if args.bundle:
            manifest = recommender._bundle.manifest
            self.description = (f"{manifest['model']} {manifest['train_stage']} with trained weights, trained on "
                                f"{manifest['source']['dataset']} (bundle {os.path.abspath(args.bundle)})")
        elif args.quick:
            self.description = "random weights, hidden 300, over 200 random clustered 32-d rows per modality"
        else:
            self.description = f"random weights, hidden 300, over the real rows of {DEFAULT_FEATURES}"
        stores = recommender.stores
        everywhere = np.logical_and.reduce([store.present.numpy() for store in stores.values()])
        everywhere[0] = False
        divisors = recommender.normalisation["divisors"]  # the stores hold rows after feature_norm: mean
        self.base = {name: store.pooled().numpy()[everywhere] * (divisors.get(name) or 1.0)
                     for name, store in stores.items()}
        self.histories = self._histories(recommender)

    def recommender(self):
        from recbole_missrec.serving.recommender import Recommender

        if self.bundle:
            return Recommender.load(self.bundle)
        import torch

        from recbole_missrec.data.feature_store import store_from_rows

        rows = self._quick_rows() if self.settings["quick"] else self._real_rows()
        stores = {name: store_from_rows(np.concatenate([np.zeros((1, table_.shape[1]), np.float32), table_]))
                  for name, table_ in rows.items()}  # row 0: padding
        torch.manual_seed(0)
        model = scoring_model(None, None, "inductive_ft", stores)
        model.discover_interests(torch.Generator().manual_seed(0))
        tokens = ["[PAD]"] + [str(item) for item in range(len(rows["text"]))]
        return Recommender(model, tokens, stores)

    def _quick_rows(self):
        """200 rows per modality around 20 random centres."""
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((20, self.settings["feature_dim"])).astype(np.float32)
        noise = 0.3 * rng.standard_normal((2, 200, centres.shape[1]), dtype=np.float32)
        members = rng.integers(0, 20, 200)
        return {"text": centres[members] + noise[0], "img": centres[members] + noise[1]}

    def _real_rows(self):
        from recbole_missrec.data.feature_file import read_feature_file

        return {name: read_feature_file(path, self.settings["feature_dim"]) for name, path in DEFAULT_FEATURES.items()}

    def _histories(self, recommender):
        """The dataset's test histories when the bundle's data is at hand, else random ones."""
        count = self.settings["queries"]
        if self.bundle:
            source = recommender._bundle.manifest["source"]
            path = os.path.join(source["data_path"], f"{source['dataset']}.test.inter")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    rows = list(csv.DictReader(handle, delimiter="\t"))
                column = next(name for name in rows[0] if name.startswith("item_id_list"))
                self.description += f"; queries: the first {count} histories of {path}"
                return [row[column].split() for row in rows[:count]]
        rng = np.random.default_rng(1)
        self.description += f"; queries: {count} random histories of 5-20 of the model's items"
        return [[recommender.tokens[i] for i in rng.integers(1, len(recommender.tokens), rng.integers(5, 21))]
                for _ in range(count)]

    def needed_mb(self, n, recommender):
        """Features kept twice (the recommender's stores, the model's buffers) plus one table's copy while
        it grows, and per index of the model the vectors, ids and graph links."""
        import torch

        features = sum(rows.shape[1] for rows in self.base.values()) * 4
        vectors = recommender.model.retrieval_vectors(torch.arange(1, 2))
        index = sum(v.shape[1] * 4 + 8 + 32 * 2 * 4 * 1.1 for v, _ in vectors.values())  # HNSW, 32 links
        return n * (2.5 * features + index) / 2**20 + 1500


def percentiles(seconds):
    return {"p50_ms": 1000 * float(np.percentile(seconds, 50)), "p99_ms": 1000 * float(np.percentile(seconds, 99))}


def timed_calls(recommender, histories, k):
    """Top-k of every history, one call each: (results, wall seconds per call, CPU seconds per call)."""
    results, wall, cpu = [], [], []
    for history in histories:
        start, start_cpu = perf_counter(), time.process_time()
        results.append(recommender.recommend([history], k=k)[0])
        wall.append(perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return results, wall, cpu


def measure(source, n, settings):
    row = {"items": n}
    recommender = source.recommender()
    needed = source.needed_mb(n, recommender)
    if needed > 0.7 * (available_mb() or float("inf")):
        return dict(row, skipped=f"needs about {needed / 1024:.1f} GB, {available_mb() / 1024:.1f} GB available")
    new = n - (len(recommender.tokens) - 1)
    row["add_items_s"] = row["add_items_cpu_s"] = 0.0
    for first in range(0, new, ADD_CHUNK):  # the generated rows of one call at a time
        count = min(ADD_CHUNK, new - first)
        features = synthetic_features(source.base, count, settings["mix"], settings["noise"], seed=first)
        start, start_cpu = perf_counter(), time.process_time()
        recommender.add_items([f"new{i}" for i in range(first, first + count)], features)
        row["add_items_s"] += perf_counter() - start
        row["add_items_cpu_s"] += time.process_time() - start_cpu
        del features
    gc.collect()
    k, histories = settings["k"], source.histories
    start, start_cpu = perf_counter(), time.process_time()
    exact = recommender.recommend(histories, k=k, batch_size=settings["exact_batch"])
    row["exact_ms_per_history"] = 1000 * (perf_counter() - start) / len(histories)
    row["exact_cpu_ms_per_history"] = 1000 * (time.process_time() - start_cpu) / len(histories)
    row["two_stage"] = []
    for kind, plan in settings["indexes"].items():
        start, start_cpu = perf_counter(), time.process_time()
        index = recommender.build_index(kind=kind, **plan["options"])
        built = {"index": kind, "build_s": perf_counter() - start, "build_cpu_s": time.process_time() - start_cpu,
                 "index_mb": index.memory_bytes() / 2**20, "sizes": {name: index.size(name) for name in index.indexes}}
        for k_prime, effort in plan["sweep"]:
            recommender.k_prime = k_prime
            setattr(index, EFFORT[kind], effort)
            found, wall, cpu = timed_calls(recommender, histories, k)
            recall = np.mean([len(set(a["items"]) & set(e["items"])) / max(1, len(e["items"]))
                              for a, e in zip(found, exact)])
            row["two_stage"].append(dict(built, **percentiles(wall), k_prime=k_prime, effort=effort,
                                         recall_at_10=float(recall), cpu_p50_ms=percentiles(cpu)["p50_ms"],
                                         cpu_p99_ms=percentiles(cpu)["p99_ms"]))
        recommender.index = index = None
        gc.collect()
    return row


COLUMNS = [("items", "{items:,}"), ("index", "{index}"), ("k' / effort", "{k_prime} / {effort}"),
           ("recall@10", "{recall_at_10:.4f}"), ("two-stage p50 ms", "{p50_ms:.2f}"), ("p99 ms", "{p99_ms:.2f}"),
           ("CPU p50 ms", "{cpu_p50_ms:.2f}"), ("CPU p99 ms", "{cpu_p99_ms:.2f}"),
           ("exact CPU ms / history", "{exact_cpu_ms_per_history:.1f}"), ("add_items CPU s", "{add_items_cpu_s:.1f}"),
           ("index build CPU s", "{build_cpu_s:.1f}"), ("index MB", "{index_mb:.0f}")]


def table_rows(rows):
    """One table row per (size, sweep point); a skipped size keeps one row."""
    flat = []
    for row in rows:
        if "skipped" in row:
            flat.append({"items": row["items"], "index": "-", "skipped": row["skipped"]})
            continue
        for point in row["two_stage"]:
            flat.append(dict(row, **point))
    return flat


def write_results(out, results):
    atomic_write_json(os.path.join(out, "serving.json"), results, indent=1)
    text = (f"Machine: {results['machine']['cpu']}, {results['machine']['threads']} thread(s), load average "
            f"{results['machine']['load_before']} before / {results['machine']['load_after']} after.\n"
            f"Model and queries: {results['source']}.\n\n{table(COLUMNS, table_rows(results['rows']), 2)}\n")
    with atomic_open(os.path.join(out, "serving.md"), "w") as handle:
        handle.write(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a bundle exported from a trained model (default: random weights)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, random features: for the tests")
    parser.add_argument("--sizes", nargs="+", type=int, help="catalogue sizes (default 100k 1M)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for serving.json/.md")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL, quick=args.quick)
    if args.sizes:
        settings["sizes"] = args.sizes
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": 1, "load_before": round(os.getloadavg()[0], 2)}
    source = Source(args, settings)
    results = {"settings": settings, "machine": machine, "source": source.description, "rows": []}
    os.makedirs(args.out, exist_ok=True)
    for n in settings["sizes"]:
        results["rows"].append(measure(source, n, settings))
        gc.collect()
        machine["load_after"] = round(os.getloadavg()[0], 2)
        print(write_results(args.out, results), flush=True)


if __name__ == "__main__":
    main()
