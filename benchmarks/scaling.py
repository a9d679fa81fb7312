"""Scaling figures: interest discovery (k-means) and full-sort scoring versus size, on this machine.

    python benchmarks/scaling.py                       # 10k/100k/1M tokens and candidates
    python benchmarks/scaling.py --quick --out /tmp/s  # tiny sizes, for the tests

Every measurement runs in its own process so that its peak resident memory (``ru_maxrss``) is its own;
the memory figure is that peak minus the peak right after the inputs were built, i.e. what the measured
call itself needed on top of its inputs. A size whose estimated memory exceeds 70% of what the machine has
available is skipped (and says so) rather than pushing other jobs out. Writes <out>/scaling.json and
<out>/scaling.md.

- k-means: ``recbole_missrec.model.missrec.interest.kmeans`` on N random 300-d tokens with K=1024, run for a fixed
  number of Lloyd iterations, tol=-inf so that it never stops early (2 by default: every iteration costs
  about the same and is reported; the model's cap is 20). Seeding (k-means++ on a sample of at most 50k
  tokens plus the first assignment) is timed by a run with max_iter=0, and one iteration's dominant cost,
  the nearest-centroid pass over all tokens (``assign``), on its own; a run with the model's 20
  iterations costs about seeding + 20 x (assign + centroid update).
- scoring: ``MISSRec.score`` of a batch of L2-normalised sequence vectors against all C candidates, two
  modalities (512-d text and image features), fused, as in ``full_sort_predict``; per user = batch time /
  batch size, best of a few repeats.
  Times are given as wall and as CPU seconds of the measuring process: on a shared machine the wall time
  includes waiting for a core, the CPU time does not (with OMP_NUM_THREADS=1 it is the idle wall time). Inductive (features only) and transductive (plus item-ID cosine).
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

HERE = os.path.dirname(os.path.abspath(__file__))
HIDDEN = 300  # MISSRec.yaml's hidden_size, used by the scoring model
FULL = {"tokens": [10_000, 100_000, 1_000_000], "candidates": [10_000, 100_000, 1_000_000], "dim": 300,
        "k": 1024, "iterations": 2, "batch": 64, "feature_dim": 512, "repeats": 3}
QUICK = {"tokens": [500, 2_000], "candidates": [1_000], "dim": 300, "k": 64, "iterations": 2, "batch": 8,
         "feature_dim": 32, "repeats": 1}


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
    seeding, seeding_cpu = timed(lambda: centroids.append(kmeans(x, k, max_iter=0, generator=torch.Generator().manual_seed(1))[0]))
    _, assign_cpu = timed(assign, x, centroids[0])
    total, total_cpu = timed(kmeans, x, k, max_iter=iterations, tol=float("-inf"), generator=torch.Generator().manual_seed(1))
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
        with open(os.path.join(os.path.dirname(HERE), "properties", name)) as handle:
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
SCORING_COLUMNS = [("candidates", "{candidates:,}"), ("mode", "{mode}"), ("batch", "{batch}"),
                   ("candidates per call", "{chunk:,}"), ("batch wall s", "{batch_seconds:.3f}"),
                   ("batch CPU s", "{batch_cpu_seconds:.3f}"), ("CPU ms / user", "{cpu_ms_per_user:.2f}"),
                   ("extra peak MB", "{extra_peak_mb:.0f}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes: {QUICK}")
    parser.add_argument("--tokens", nargs="+", type=int, help="k-means sizes (default 10k 100k 1M)")
    parser.add_argument("--candidates", nargs="+", type=int, help="scoring sizes (default 10k 100k 1M)")
    parser.add_argument("--iterations", type=int, help="Lloyd iterations per k-means run (default 2)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for scaling.json/.md")
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.measure:
        kind, *values = args.measure
        figures = measure_kmeans(*map(int, values)) if kind == "kmeans" else measure_scoring(
            int(values[0]), int(values[1]), int(values[2]), values[3], int(values[4]))
        print(json.dumps(figures))
        return
    settings = dict(QUICK if args.quick else FULL)
    for key in ("tokens", "candidates", "iterations"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    settings["threads"] = os.environ.get("OMP_NUM_THREADS", "default")
    os.makedirs(args.out, exist_ok=True)
    kmeans_rows, scoring_rows = [], []
    for n in settings["tokens"]:
        kmeans_rows.append(in_subprocess("kmeans", n, settings["dim"], settings["k"], settings["iterations"]))
        row = kmeans_rows[-1]
        print(f"k-means {n:,} tokens: " + (row.get("skipped") or f"{row['cpu_seconds']:.1f} CPU s ({row['seconds']:.1f} wall), +{row['extra_peak_mb']:.0f} MB"), flush=True)
    for n in settings["candidates"]:
        for mode in ("inductive_ft", "transductive_ft"):
            scoring_rows.append(in_subprocess("scoring", n, settings["feature_dim"], settings["batch"], mode, settings["repeats"]))
            row = scoring_rows[-1]
            print(f"scoring {n:,} candidates ({mode}): " + (row.get("skipped") or f"{row['cpu_ms_per_user']:.2f} CPU ms/user"), flush=True)
    results = {"settings": settings, "kmeans": kmeans_rows, "scoring": scoring_rows}
    atomic_write_json(os.path.join(args.out, "scaling.json"), results, indent=1)
    text = f"Settings: `{json.dumps(settings)}`\n\n{table(KMEANS_COLUMNS, kmeans_rows, 3)}\n\n{table(SCORING_COLUMNS, scoring_rows, 3)}\n"
    with atomic_open(os.path.join(args.out, "scaling.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
