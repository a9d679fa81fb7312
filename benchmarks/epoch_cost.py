"""What a training epoch costs, model by model, on this machine: time per epoch, evaluation, peak memory.

    OMP_NUM_THREADS=1 python benchmarks/epoch_cost.py --dataset Scientific_mm_subset --data_path ../shared/data

Rows (each in a fresh process, one after another, so that every one has the machine and its own peak
resident memory):
- ``SASRec, RecBole``: stock ``recbole.quick_start.run_recbole`` (RecBole's own loader: every batch padded
  to the data's longest history), the reference point;
- ``SASRec, plugin padded`` / ``SASRec, plugin length-aware``: RecBole's SASRec through the plugin's entry
  point, with RecBole's loader or the plugin's length-aware one (``trim_batches``, ``length_buckets``);
- ``MISSRec, plugin padded`` / ``MISSRec, plugin length-aware``: the same for MISSRec (transductive);
- any ``--extra MODEL`` (e.g. MSM4SR, UniSRec), length-aware.
Every row: width 300 (``--hidden``), the plugin's shared protocol (``properties/overall.yaml``), seed 2020,
``--epochs`` epochs without early stopping. Train seconds per epoch are wall seconds from the run's own
epoch log; ``CPU s`` is the whole process's user + system time (loading, training, every evaluation), the
contention-free cost. Writes <out>/epoch_cost.json and <out>/epoch_cost.md.

Peak RSS counts what glibc's allocator keeps after tensors are freed, which depends on the order of
allocation sizes as much as on the model. ``--mmap-threshold BYTES`` runs every row with glibc's
``MALLOC_MMAP_THRESHOLD_`` set: blocks above it are mapped and unmapped per tensor, so the peak then
approximates the largest live tensor memory (at a cost in system time; compare memory, not speed, there).
``--reuse-freed-memory`` has the plugin rows' trainer make glibc reuse freed blocks instead
(``reuse_freed_memory``; off by default outside pre-training). Stock RecBole's row runs on glibc's defaults.
"""
import argparse
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
from statistics import mean


from recbole_missrec.atomic import atomic_open, atomic_write_json
from recbole_missrec.paths import properties_dir

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCH_LINE = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s")
EVAL_LINE = re.compile(r"epoch (\d+) evaluating \[time: ([\d.]+)s")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # RecBole colours parts of its log lines
PADDED = {"trim_batches": False, "length_buckets": 0}
LENGTH_AWARE = {"trim_batches": True, "length_buckets": 16}
ROWS = {
    "SASRec, RecBole": ("SASRec", "recbole", {}),
    "SASRec, plugin padded": ("SASRec", "plugin", PADDED),
    "SASRec, plugin length-aware": ("SASRec", "plugin", LENGTH_AWARE),
    "MISSRec, plugin padded": ("MISSRec", "plugin", PADDED),
    "MISSRec, plugin length-aware": ("MISSRec", "plugin", {}),
}


class EpochLog(logging.Handler):
    """Collects RecBole's "epoch N training [time: Xs" and "evaluating [time: Ys" lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.train, self.valid = [], []

    def emit(self, record):
        message = ANSI.sub("", record.getMessage())
        for pattern, seconds in ((EPOCH_LINE, self.train), (EVAL_LINE, self.valid)):
            found = pattern.search(message)
            if found:
                seconds.append(float(found.group(2)))


def run_config(args):
    config = {"data_path": os.path.abspath(args.data_path), "hidden_size": args.hidden, "epochs": args.epochs,
              "stopping_step": args.epochs, "seed": 2020, "show_progress": False, "state": "INFO",
              "checkpoint_dir": os.path.abspath(os.path.join(args.work, "saved")),
              "reuse_freed_memory": args.reuse_freed_memory}
    return config


def measure(args):
    """One row, in this process: its figures as a dict."""
    model, entry, settings = ROWS.get(args.measure) or (args.measure, "plugin", {})
    config = dict(run_config(args), **settings)
    log = EpochLog()
    logging.getLogger().addHandler(log)
    logging.getLogger().setLevel(logging.INFO)
    os.makedirs(args.work, exist_ok=True)
    os.chdir(args.work)  # RecBole writes log/ and log_tensorboard/ into the working directory
    sys.argv = sys.argv[:1]
    if entry == "recbole":
        from recbole.quick_start import run_recbole

        properties = properties_dir()
        files = [os.path.join(properties, "overall.yaml"), os.path.join(properties, "dataset", f"{args.dataset}.yaml")]
        config["train_neg_sample_args"] = None
        # saved=False: RecBole's checkpoints pickle its Config, and torch >= 2.6 refuses to reload them
        result = run_recbole(model=model, dataset=args.dataset, config_file_list=[f for f in files if os.path.isfile(f)],
                             config_dict=config, saved=False)
        test = result["test_result"]
    else:
        from recbole_missrec.quick_start import run_recbole_missrec

        result = run_recbole_missrec(model, args.dataset, config_dict=config, saved=False)
        test = result["test_result"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "row": args.measure, "model": model, "entry": entry, "settings": settings,
        "train_seconds_per_epoch": mean(log.train), "train_seconds": log.train,
        "eval_seconds": mean(log.valid) if log.valid else None,
        "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
        "test_ndcg@10": float(test["ndcg@10"]), "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }


def in_subprocess(args, row):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    command = [sys.executable, os.path.abspath(__file__), "--dataset", args.dataset, "--data_path", args.data_path,
               "--epochs", str(args.epochs), "--hidden", str(args.hidden), "--work", os.path.join(args.work, slug(row)),
               "--measure", row] + (["--reuse-freed-memory"] if args.reuse_freed_memory else [])
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{row} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def slug(row):
    return re.sub(r"[^A-Za-z0-9]+", "-", row).strip("-")


def machine():
    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_before": os.getloadavg()}


def allocator(args):
    if args.mmap_threshold:
        return f"glibc MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
    if args.reuse_freed_memory:
        return "plugin rows: reuse_freed_memory (mmap threshold 1 GiB, trim threshold 2 GiB); stock RecBole: glibc defaults"
    return "glibc defaults"


def markdown(rows, reference):
    base = next(row for row in rows if row["row"] == reference)["train_seconds_per_epoch"]
    lines = ["| row | train s / epoch | x stock SASRec | eval s | CPU s / run | peak RSS MB | test NDCG@10 |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        eval_seconds = f"{row['eval_seconds']:.1f}" if row["eval_seconds"] is not None else "-"
        lines.append(f"| {row['row']} | {row['train_seconds_per_epoch']:.1f} | {row['train_seconds_per_epoch'] / base:.2f} | "
                     f"{eval_seconds} | {row['cpu_seconds']:.0f} | {row['peak_rss_mb']:.0f} | {row['test_ndcg@10']:.4f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per row (default 2)")
    parser.add_argument("--hidden", type=int, default=300, help="hidden_size of every row (default 300)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows to run (default all: {list(ROWS)})")
    parser.add_argument("--extra", nargs="*", default=[], help="more plugin models, length-aware (e.g. MSM4SR)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<dataset>)")
    parser.add_argument("--work", default=None, help="logs and checkpoints (default benchmarks/work/epoch_cost)")
    parser.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="MALLOC_MMAP_THRESHOLD_ of every row (peak RSS then approximates live memory)")
    parser.add_argument("--reuse-freed-memory", action="store_true",
                        help="plugin rows with reuse_freed_memory (glibc keeps freed blocks up to 1 GiB)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one row in this process
    args = parser.parse_args()
    args.work = os.path.abspath(args.work or os.path.join(HERE, "work", "epoch_cost", args.dataset))
    if args.measure:
        print(json.dumps(measure(args)))
        return
    out = os.path.abspath(args.out or os.path.join(HERE, "results", args.dataset))
    host = machine()
    rows = []
    for row in args.rows + args.extra:
        rows.append(in_subprocess(args, row))
        print(f"{row}: {rows[-1]['train_seconds_per_epoch']:.1f} s / epoch, {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    results = {"dataset": args.dataset, "epochs": args.epochs, "hidden_size": args.hidden, "machine": host,
               "malloc_mmap_threshold": args.mmap_threshold, "allocator": allocator(args),
               "load_average_after": os.getloadavg(), "rows": rows}
    atomic_write_json(os.path.join(out, "epoch_cost.json"), results, indent=1)
    text = markdown(rows, "SASRec, RecBole") if "SASRec, RecBole" in args.rows else json.dumps(rows, indent=1)
    with atomic_open(os.path.join(out, "epoch_cost.md"), "w") as handle:
        handle.write(f"# {args.dataset}: cost of a training epoch\n\nMachine: {host}; allocator: {allocator(args)}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
