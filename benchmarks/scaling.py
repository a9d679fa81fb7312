"""Scaling figures: interest discovery (k-means) and full-sort scoring versus size, on this machine.

    python benchmarks/scaling.py                       # all parts at full size (about an hour on 2 cores)
    python benchmarks/scaling.py --parts discovery     # only the default-ratio rows
    python benchmarks/scaling.py --quick --out /tmp/s  # tiny sizes, for the tests

Every measurement runs in its own process so that its peak resident memory (``ru_maxrss``) is its own;
"extra peak MB" is that peak minus the peak right after the inputs were built, i.e. what the measured
call itself needed on top of its inputs, and "peak MB" the whole process (inputs, torch itself). A size
whose estimated memory exceeds 70% of what the machine has available is skipped (and says so) rather than
pushing other jobs out. Times are given as wall and as CPU seconds of the measuring process: on a shared
machine the wall time includes waiting for a core, the CPU time does not (with OMP_NUM_THREADS=1 it is the
idle wall time). Writes <out>/scaling.json and <out>/scaling.md.

Parts:
- kmeans: ``recbole_missrec.model.missrec.interest.kmeans`` (exact) on N random 300-d tokens with
  K=1024, run for a fixed number of Lloyd iterations, tol=-inf so that it never stops early (2 by default:
  every iteration costs about the same and is reported; the model's cap is 20). Seeding (k-means++ on a
  sample of at most 50k tokens plus the first assignment) is timed by a run with max_iter=0, and one
  iteration's dominant cost, the nearest-centroid pass over all tokens (``assign``), on its own.
- discovery: a whole interest discovery at the model's default ratios (K = ceil(ratio * tokens): 0.02 in
  pre-training, 0.5 in fine-tuning) and settings (``kmeans_method: auto``, at most 20 iterations, tol
  1e-4), on realistic tokens (see ``tokens``); "seeding" is the same call with max_iter=0.
- quality: the inertia of the approximate scheme over that of exact Lloyd, both seeded by k-means++ over
  all tokens (exact: init_sample = tokens; approximate: per cell, every token at ratio 0.5) and both
  capped at 20 iterations with tol 1e-4, on realistic and on Gaussian tokens.
- scoring: ``MISSRec.score`` of a batch of L2-normalised sequence vectors against all C candidates, two
  modalities (512-d text and image features), fused, as in ``full_sort_predict``; per user = batch time /
  batch size, best of a few repeats. Inductive (features only) and transductive (plus item-ID cosine).
  When all candidates at once would not fit in the memory this machine has free, they are scored 100k
  per call (the table's "candidates per call"), which measures the same arithmetic.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from time import perf_counter

from recbole_missrec.atomic import atomic_open, atomic_write_json
from recbole_missrec.paths import properties_dir
from report import json_object, read_own_json

HERE = os.path.dirname(os.path.abspath(__file__))
HIDDEN = 300  # MISSRec.yaml's hidden_size, used by the scoring model
# Real CLIP ViT-B/32 rows (text and image of 1,585 items), read by path and never copied (see its README).
CLIP_FILES = [os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data", "Scientific_mm_subset",
                           f"Scientific_mm_subset.{suffix}") for suffix in ("feat1CLS", "feat3CLS")]
PARTS = ("kmeans", "discovery", "quality", "scoring")
FULL = {"tokens": [10_000, 100_000, 1_000_000], "candidates": [10_000, 100_000, 1_000_000], "dim": 300,
        "k": 1024, "iterations": 2, "batch": 64, "feature_dim": 512, "repeats": 3,
        "discovery_tokens": 1_000_000, "ratios": [0.02, 0.5], "quality_tokens": 100_000}
QUICK = {"tokens": [500, 2_000], "candidates": [1_000], "dim": 300, "k": 64, "iterations": 2, "batch": 8,
         "feature_dim": 32, "repeats": 1, "discovery_tokens": 4_000, "ratios": [0.02, 0.5], "quality_tokens": 2_000}


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function, *args, **kwargs):
    """(wall seconds, CPU seconds of this process) of one call. On a shared machine the wall time includes
    waiting for a core; the CPU time does not, and with one thread it is the wall time of an idle machine."""
    wall, cpu = perf_counter(), time.process_time()
    function(*args, **kwargs)
    return perf_counter() - wall, time.process_time() - cpu


def skipped(row, needed_mb):
    """The row of a size left out because it would not fit in the memory this machine has free."""
    return dict(row, skipped=f"needs about {needed_mb / 1024:.1f} GB, {available_mb() / 1024:.1f} GB available")


def tokens(kind, n, dim, seed=0):
    """[n, dim] float32 tokens, or None when the real rows are absent.

    gaussian: i.i.d. N(0, 1). clip: the 3,170 real CLIP rows of Scientific_mm_subset (text and image)
    through a random 512 -> dim linear map with PyTorch's default init (an untrained modality adapter);
    each token is a row moved a random part (up to half) of the way towards one of its 10 nearest rows,
    plus isotropic noise of a tenth of the median nearest-row distance: a continuum around real items,
    with their cluster structure, rather than copies of them. Built in blocks, so the only large array is
    the result.
    """
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(n, dim, generator=generator)
    if not all(os.path.isfile(path) for path in CLIP_FILES):
        return None
    rows = torch.from_numpy(np.concatenate([np.fromfile(path, dtype=np.float32).reshape(-1, 512) for path in CLIP_FILES]))
    bound = 512 ** -0.5
    weight = (torch.rand(512, dim, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(dim, generator=generator) * 2 - 1) * bound
    rows = rows @ weight + bias
    distances = torch.cdist(rows, rows).fill_diagonal_(float("inf"))
    neighbours = distances.topk(10, largest=False).indices  # [rows, 10]
    noise = 0.1 * distances.min(1).values.median().item() / dim ** 0.5
    out = torch.empty(n, dim)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        first = torch.randint(len(rows), (size,), generator=generator)
        second = neighbours[first, torch.randint(10, (size,), generator=generator)]
        step = torch.rand(size, 1, generator=generator) * 0.5
        out[start:start + size] = rows[first] + step * (rows[second] - rows[first])
        out[start:start + size] += torch.randn(size, dim, generator=generator) * noise
    return out


def inertia(x, centroids, labels):
    """Sum of squared distances of the tokens to their centroids, in blocks."""
    return sum((block - centroids[block_labels]).pow(2).sum().item()
               for block, block_labels in zip(x.split(100_000), labels.split(100_000)))


def measure_discovery(n, dim, ratio, kind):
    """One whole interest discovery at K = ceil(ratio * n), as the model runs it (method auto, at most
    20 iterations, tol 1e-4); seeding alone timed by a run with max_iter=0."""
    import torch

    from recbole_missrec.model.missrec.interest import choose_method, kmeans, num_interests

    k = num_interests(n, ratio)
    row = {"tokens": n, "dim": dim, "ratio": ratio, "k": k, "kind": kind, "method": choose_method("auto", n, k, dim)}
    needed_mb = (2 * n * dim + 3 * k * dim) * 4 / 2**20 + 40 * n / 2**20 + 500
    if needed_mb > 0.7 * (available_mb() or float("inf")):
        return skipped(row, needed_mb)
    x = tokens(kind, n, dim)
    if x is None:
        return dict(row, skipped="the real CLIP rows (../shared/data/Scientific_mm_subset) are absent")
    before = peak_mb()
    seeding, seeding_cpu = timed(kmeans, x, k, max_iter=0, generator=torch.Generator().manual_seed(1))
    total, total_cpu = timed(kmeans, x, k, generator=torch.Generator().manual_seed(1))
    return dict(row, seconds=total, cpu_seconds=total_cpu, seeding_seconds=seeding, seeding_cpu_seconds=seeding_cpu,
                input_mb=x.numel() * 4 / 2**20, peak_rss_mb=peak_mb(), extra_peak_mb=peak_mb() - before)


def measure_quality(n, dim, ratio, kind):
    """Inertia of the approximate k-means over exact Lloyd's, same seed, both seeded over all tokens."""
    import torch

    from recbole_missrec.model.missrec.interest import kmeans, num_interests

    k = num_interests(n, ratio)
    row = {"tokens": n, "dim": dim, "ratio": ratio, "k": k, "kind": kind}
    x = tokens(kind, n, dim)
    if x is None:
        return dict(row, skipped="the real CLIP rows (../shared/data/Scientific_mm_subset) are absent")
    figures = {}
    for method, init_sample in (("exact", n), ("approx", n)):
        result = []
        wall, cpu = timed(lambda: result.extend(kmeans(x, k, init_sample=init_sample, generator=torch.Generator().manual_seed(1), method=method)))
        figures.update({f"{method}_inertia": inertia(x, *result), f"{method}_seconds": wall, f"{method}_cpu_seconds": cpu})
    return dict(row, **figures, ratio_to_exact=figures["approx_inertia"] / figures["exact_inertia"])


def measure_kmeans(n, dim, k, iterations):
    """Seconds of seeding and of ``iterations`` Lloyd steps on n random tokens; extra peak memory."""
    import torch

    from recbole_missrec.model.missrec.interest import assign, kmeans

    row = {"tokens": n, "dim": dim, "k": k, "iterations": iterations}
    needed_mb = 3 * n * dim * 4 / 2**20 + 500  # tokens, k-means' float copy, labels and chunks, torch itself
    if needed_mb > 0.7 * (available_mb() or float("inf")):
        return skipped(row, needed_mb)
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    before = peak_mb()
    centroids = []
    seeding, seeding_cpu = timed(lambda: centroids.append(kmeans(x, k, max_iter=0, generator=torch.Generator().manual_seed(1), method="exact")[0]))
    _, assign_cpu = timed(assign, x, centroids[0])
    total, total_cpu = timed(kmeans, x, k, max_iter=iterations, tol=float("-inf"), generator=torch.Generator().manual_seed(1), method="exact")
    return dict(row, seconds=total, cpu_seconds=total_cpu, seeding_seconds=seeding, seeding_cpu_seconds=seeding_cpu,
                assign_cpu_seconds=assign_cpu, input_mb=x.numel() * 4 / 2**20, peak_rss_mb=peak_mb(),
                extra_peak_mb=peak_mb() - before)


class _Config(dict):
    """MISSRec reads its settings from a RecBole Config; unknown keys answer None, as there."""

    def __missing__(self, key):
        return None


def scoring_model(n_items, feature_dim, mode, stores=None):
    """A MISSRec with random weights over two modalities, built without a RecBole dataset: over n_items
    random items, or over ``stores`` ({"text", "img"}: FeatureStore) when given."""
    import types

    import torch
    import yaml

    from recbole_missrec.data.feature_store import store_from_rows
    from recbole_missrec.model import MISSRec

    config = _Config()
    for name in ("overall.yaml", os.path.join("model", "MISSRec.yaml")):
        with open(os.path.join(properties_dir(), name)) as handle:
            config.update(yaml.safe_load(handle))
    config.update(USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", LIST_SUFFIX="_list", NEG_PREFIX="neg_",
                  ITEM_LIST_LENGTH_FIELD="item_length", MAX_ITEM_LIST_LENGTH=50, device="cpu",
                  train_stage=mode, num_interest=64, hidden_size=HIDDEN)
    if stores is None:
        generator = torch.Generator().manual_seed(0)
        stores = {name: store_from_rows(torch.randn(n_items, feature_dim, generator=generator).numpy())
                  for name in ("text", "img")}
    n_rows = len(stores["text"].present)
    dataset = types.SimpleNamespace(num=lambda field: n_rows, item_features=stores)
    return MISSRec(config, dataset).eval()


def available_mb():
    """MemAvailable of this machine (other jobs included), from /proc/meminfo; None elsewhere."""
    if not os.path.isfile("/proc/meminfo"):
        return None
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["MemAvailable"].split()[0]) / 1024


def scoring_plan(n_items, feature_dim, hidden, batch, mode):
    """(candidates per ``score`` call, estimated MB) for this machine's free memory: all candidates at once
    when the working set (feature tables, their gathered copy, tokens and their normalised copy, ID table,
    logits) fits in 70% of the available memory, else 100k per call; (None, MB) when even the model's
    tables would not fit, so that the benchmark never pushes other jobs on a shared machine out."""
    tables = 4 * n_items * (2 * feature_dim + (hidden if mode == "transductive_ft" else 0)) / 2**20
    per_candidate = 4 * (2 * feature_dim + 4 * hidden + 2 * hidden + 6 * batch) / 2**20
    free = available_mb() or float("inf")
    for chunk in (n_items, min(n_items, 100_000)):
        needed = tables + chunk * per_candidate
        if needed < 0.7 * free:
            return chunk, needed
    return None, tables + min(n_items, 100_000) * per_candidate


def measure_scoring(n_items, feature_dim, batch, mode, repeats):
    """Full-sort scoring of ``batch`` sequence vectors against all n_items candidates."""
    import torch
    import torch.nn.functional as F

    row = {"candidates": n_items, "mode": mode, "batch": batch}
    chunk, needed_mb = scoring_plan(n_items, feature_dim, HIDDEN, batch, mode)
    if chunk is None:
        return skipped(row, needed_mb)
    model = scoring_model(n_items, feature_dim, mode)
    users = F.normalize(torch.randn(batch, model.hidden_size, generator=torch.Generator().manual_seed(1)), dim=-1)
    chunks = torch.arange(n_items).split(chunk)
    before = peak_mb()
    with torch.no_grad():
        times = [timed(lambda: [model.score(users, candidates) for candidates in chunks]) for _ in range(repeats)]
    wall, cpu = min(times, key=lambda pair: pair[1])
    return dict(row, chunk=chunk, batch_seconds=wall, batch_cpu_seconds=cpu, ms_per_user=1000 * wall / batch,
                cpu_ms_per_user=1000 * cpu / batch, peak_rss_mb=peak_mb(), extra_peak_mb=peak_mb() - before)


def in_subprocess(kind, *args):
    """Run one measurement in a fresh process and return its figures."""
    command = [sys.executable, os.path.abspath(__file__), "--measure", kind, *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(columns, rows, key_columns):
    """A markdown table; ``columns`` are (header, format) pairs, and a skipped row keeps its first
    ``key_columns`` cells and says why in the next one."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt.format(**row) for _, fmt in columns[:key_columns]]
        if "skipped" in row:
            cells += [f"skipped: {row['skipped']}"] + [""] * (len(columns) - key_columns - 1)
        else:
            cells += [fmt.format(**row) for _, fmt in columns[key_columns:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


KMEANS_COLUMNS = [("tokens", "{tokens:,}"), ("K", "{k}"), ("iterations", "{iterations}"), ("wall s", "{seconds:.1f}"),
                  ("CPU s", "{cpu_seconds:.1f}"), ("seeding CPU s", "{seeding_cpu_seconds:.1f}"),
                  ("assign CPU s", "{assign_cpu_seconds:.2f}"), ("input MB", "{input_mb:.0f}"),
                  ("extra peak MB", "{extra_peak_mb:.0f}")]
DISCOVERY_COLUMNS = [("tokens", "{tokens:,}"), ("tokens kind", "{kind}"), ("ratio", "{ratio}"), ("K", "{k:,}"),
                     ("method", "{method}"), ("wall s", "{seconds:.1f}"), ("CPU s", "{cpu_seconds:.1f}"),
                     ("seeding wall s", "{seeding_seconds:.1f}"), ("seeding CPU s", "{seeding_cpu_seconds:.1f}"),
                     ("input MB", "{input_mb:.0f}"), ("peak MB", "{peak_rss_mb:.0f}"), ("extra peak MB", "{extra_peak_mb:.0f}")]
QUALITY_COLUMNS = [("tokens", "{tokens:,}"), ("tokens kind", "{kind}"), ("ratio", "{ratio}"), ("K", "{k:,}"),
                   ("exact inertia", "{exact_inertia:.6g}"), ("approx inertia", "{approx_inertia:.6g}"),
                   ("approx / exact", "{ratio_to_exact:.4f}"), ("exact wall s", "{exact_seconds:.1f}"),
                   ("exact CPU s", "{exact_cpu_seconds:.1f}"), ("approx wall s", "{approx_seconds:.1f}"),
                   ("approx CPU s", "{approx_cpu_seconds:.1f}")]
SCORING_COLUMNS = [("candidates", "{candidates:,}"), ("mode", "{mode}"), ("batch", "{batch}"),
                   ("candidates per call", "{chunk:,}"), ("batch wall s", "{batch_seconds:.3f}"),
                   ("batch CPU s", "{batch_cpu_seconds:.3f}"), ("CPU ms / user", "{cpu_ms_per_user:.2f}"),
                   ("extra peak MB", "{extra_peak_mb:.0f}")]


MEASURES = {  # kind: (function, argument types), for ``--measure`` in the child process
    "kmeans": (measure_kmeans, (int, int, int, int)),
    "discovery": (measure_discovery, (int, int, float, str)),
    "quality": (measure_quality, (int, int, float, str)),
    "scoring": (measure_scoring, (int, int, int, str, int)),
}


def planned(settings):
    """(part, measurement arguments, progress line) of every row, in order."""
    for n in settings["tokens"]:
        yield "kmeans", (n, settings["dim"], settings["k"], settings["iterations"]), f"k-means {n:,} tokens"
    for ratio in settings["ratios"]:
        n = settings["discovery_tokens"]
        yield "discovery", (n, settings["dim"], ratio, "clip"), f"discovery {n:,} tokens, ratio {ratio}"
    for ratio in sorted(settings["ratios"], reverse=True):
        for kind in ("clip", "gaussian"):
            n = settings["quality_tokens"]
            yield "quality", (n, settings["dim"], ratio, kind), f"quality {n:,} {kind} tokens, ratio {ratio}"
    for n in settings["candidates"]:
        for mode in ("inductive_ft", "transductive_ft"):
            yield "scoring", (n, settings["feature_dim"], settings["batch"], mode, settings["repeats"]), \
                f"scoring {n:,} candidates ({mode})"


def summary(part, row):
    if "skipped" in row:
        return row["skipped"]
    if part == "quality":
        return f"approx / exact inertia {row['ratio_to_exact']:.4f}"
    if part == "scoring":
        return f"{row['cpu_ms_per_user']:.2f} CPU ms/user"
    return f"{row['cpu_seconds']:.1f} CPU s ({row['seconds']:.1f} wall), +{row['extra_peak_mb']:.0f} MB"


def previous_results(path, settings):
    """The parts an earlier run wrote to ``path`` at the same sizes, so that measuring some parts again
    (``--parts``) keeps the others' rows; nothing when the file is absent or its sizes differ."""
    if not os.path.isfile(path):
        return {}
    earlier = read_own_json(path, json_object, "a results file of scaling.py",
                            "restore it from git, or delete it and measure every part again")
    shared = set(settings) & set(earlier.get("settings", {})) - {"threads"}
    same = all(settings[key] == earlier["settings"][key] for key in shared)
    return {part: rows for part, rows in earlier.items() if part in PARTS} if same else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes: {QUICK}")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default all)")
    parser.add_argument("--tokens", nargs="+", type=int, help="k-means sizes (default 10k 100k 1M)")
    parser.add_argument("--candidates", nargs="+", type=int, help="scoring sizes (default 10k 100k 1M)")
    parser.add_argument("--iterations", type=int, help="Lloyd iterations per k-means run (default 2)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for scaling.json/.md")
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.measure:
        kind, *values = args.measure
        function, types = MEASURES[kind]
        print(json.dumps(function(*(cast(value) for cast, value in zip(types, values)))))
        return
    settings = dict(QUICK if args.quick else FULL)
    for key in ("tokens", "candidates", "iterations"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    settings["threads"] = os.environ.get("OMP_NUM_THREADS", "default")
    os.makedirs(args.out, exist_ok=True)
    results = previous_results(os.path.join(args.out, "scaling.json"), settings)
    results.update({"settings": settings, **{part: [] for part in args.parts}})
    for part, values, label in planned(settings):
        if part in args.parts:
            results[part].append(in_subprocess(part, *values))
            print(f"{label}: {summary(part, results[part][-1])}", flush=True)
    atomic_write_json(os.path.join(args.out, "scaling.json"), results, indent=1)
    columns = {"kmeans": KMEANS_COLUMNS, "discovery": DISCOVERY_COLUMNS, "quality": QUALITY_COLUMNS,
               "scoring": SCORING_COLUMNS}
    tables = [f"### {part}\n\n{table(columns[part], results[part], 4 if part in ('discovery', 'quality') else 3)}"
              for part in PARTS if part in results]
    text = f"Settings: `{json.dumps(settings)}`\n\n" + "\n\n".join(tables) + "\n"
    with atomic_open(os.path.join(args.out, "scaling.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
