"""Benchmark MISSRec against RecBole's baselines: same data, split, evaluator and budget, several seeds.

    python benchmarks/run.py --dataset Scientific_mm_subset --data_path ../shared/data --seeds 1 2 3

Each (model variant, seed) runs in a fresh process (single_run.py) with the work folder as its working
directory, and its record is written to <out>/runs/ as soon as it ends; re-running the same command skips
the finished runs and continues an interrupted one from its last validated epoch (``resume``), so a long
sweep can be completed over several sittings; with a larger --epochs or --stopping-step it continues the
finished one-stage runs too. A crashed run is recorded as failed with the tail of its output (and continued
next time); it does not stop the sweep. After the sweep, <out>/results.json, table.md and benchmark.png are
rebuilt from all records.
"""
import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
from datetime import datetime, timezone
from time import perf_counter

import yaml

from attributes import can_derive, prepare_working_copy
from recbole_missrec.atomic import atomic_write_json
from report import protocol_defaults, read_run_record, write_reports
from variants import DEFAULT_VARIANTS, VARIANTS, checkpoint_of, expand_variants, parse_checkpoints, run_config

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK_BUDGET = {"epochs": 1, "stopping_step": 1, "s3rec_pretrain_epochs": 1}
# Budget keys a finished run may go on under when they grow (the trainer's BUDGET_CONFIG_KEYS).
GROWING_BUDGET = ("epochs", "stopping_step")
PROGRESS = re.compile(r"epoch \d+ (training|evaluating)|test result|Traceback|Error")
ERROR_TAIL_LINES = 40


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="dataset name (with --data_path) or a dataset folder")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/")
    parser.add_argument("--models", nargs="+", default=DEFAULT_VARIANTS, help=f"variants, of {sorted(VARIANTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--pretrained", nargs="+", default=[], metavar="[MODEL=]PATH",
                        help="pre-training checkpoints (MODEL=PATH per family, or one PATH for all): adds the "
                             "+pretrained twin of every chosen variant of those families")
    parser.add_argument("--epochs", type=int, default=None, help="cap on training epochs (overall.yaml: 300)")
    parser.add_argument("--stopping-step", type=int, default=None, help="early-stopping patience (overall.yaml: 10)")
    parser.add_argument("--s3rec-pretrain-epochs", type=int, default=10, help="S3Rec's pre-training epochs")
    parser.add_argument("--quick", action="store_true", help=f"tiny budget for smoke tests: {QUICK_BUDGET}")
    parser.add_argument("--config-files", nargs="*", default=[], help="extra yaml files for every run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="setting for every run (value parsed as yaml), e.g. --set train_batch_size=256")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<dataset>)")
    parser.add_argument("--work", default=None, help="logs, checkpoints, data copy (default benchmarks/work/<dataset>)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the reports from runs/")
    parser.add_argument("--no-plot", action="store_true", help="no benchmark.png (no matplotlib needed)")
    return parser.parse_args(argv)


def resolve_dataset(args):
    """(dataset folder, dataset name) from --dataset and --data_path."""
    folder = os.path.join(args.data_path, args.dataset) if args.data_path else args.dataset
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise SystemExit(f"dataset folder {folder} does not exist")
    return folder, os.path.basename(folder.rstrip(os.sep))


def parse_overrides(pairs):
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def budget_of(args):
    """The training budget every model gets; None leaves overall.yaml's value."""
    budget = dict(QUICK_BUDGET) if args.quick else {
        "epochs": args.epochs, "stopping_step": args.stopping_step, "s3rec_pretrain_epochs": args.s3rec_pretrain_epochs,
    }
    defaults = protocol_defaults()
    for key in ("epochs", "stopping_step"):
        if budget[key] is None:
            budget[key] = defaults[key]
    return budget


def machine():
    """Where a run ran, for the record (runs of one table may come from several sittings)."""
    import torch

    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory_gb, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
    }


def run_id(variant, seed):
    return f"{variant}__seed{seed}"


def extends(stored, current, variant):
    """Whether a finished run of budget ``stored`` goes on under ``current``: only the epoch cap and the
    patience grew, and ``variant`` trains in one stage. Its progress file then continues it from its last
    epoch (the trainer's ``resume_progress``) to what a fresh run with the larger budget gives. A two-stage
    variant is kept as it is: its pre-training stage would train on too, under a fine-tuning stage resumed
    from the earlier pre-trained weights."""
    if stored == current or "pretrain" in variant.stages:
        return False
    fixed = [key for key in set(stored) | set(current) if key not in GROWING_BUDGET]
    return all(stored.get(key) == current.get(key) for key in fixed) and \
        all(current[key] >= stored[key] for key in GROWING_BUDGET)


def finished(path):
    """The record at ``path`` if that run finished successfully (failed runs are retried)."""
    if not os.path.isfile(path):
        return None
    record = read_run_record(path)
    return record if record.get("status") == "ok" else None


def stream(process, log_path, prefix):
    """Copy the run's output to its log file, echo progress lines, return the last lines."""
    tail = []
    with open(log_path, "w") as log:
        for line in process.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-ERROR_TAIL_LINES:]
            if PROGRESS.search(line):
                print(f"  {prefix} {line.strip()[-150:]}", flush=True)
    return tail


def stop_orphan(process):
    """Ends a run whose sweep is stopping (Ctrl-C, ``kill``): left alone it would train on unseen, and a relaunch
    of the sweep would start a second process on the same progress file. Its last finished epoch stays in that
    file, so the relaunch continues from there."""
    if process.poll() is None:
        process.terminate()
        process.wait()


def stop_on_sigterm():
    """``kill`` stops the sweep as Ctrl-C does (Python's default for SIGTERM exits at once, skipping ``finally``)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def execute(spec, work_dir, threads, prefix):
    """Run single_run.py on ``spec`` in a fresh process; returns (summary or None, error tail)."""
    name = run_id(spec["variant"], spec["config"]["seed"])
    spec_path = os.path.join(work_dir, "specs", name + ".json")
    result_path = os.path.join(work_dir, "specs", name + ".result.json")
    if os.path.exists(result_path):
        os.remove(result_path)
    atomic_write_json(spec_path, spec, indent=1)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, os.path.join(HERE, "single_run.py"), spec_path, result_path]
    process = subprocess.Popen(command, cwd=work_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tail = stream(process, os.path.join(work_dir, "logs", name + ".log"), prefix)
    finally:
        stop_orphan(process)
    if process.wait() == 0 and os.path.isfile(result_path):
        with open(result_path) as handle:
            return json.load(handle), None
    return None, "\n".join(tail) + f"\n(exit status {process.returncode})"


def plan(variants, seeds, folder, name):
    """(variant, seed) pairs, seed-major so that an interrupted sweep has every model at least once;
    attribute models are dropped, with a note, when no item attributes can be derived."""
    if not can_derive(folder, name):
        dropped = [v for v in variants if VARIANTS[v].needs_attributes]
        if dropped:
            print(f"skipping {dropped}: {name} has no .item file and no .text + .item2index to derive one from")
        variants = [v for v in variants if not VARIANTS[v].needs_attributes]
    return [(variant, seed) for seed in seeds for variant in variants]


def run_spec(args, variant_name, seed, name, data_path, work_dir, budget, overrides, checkpoints):
    """What single_run.py needs to run one (variant, seed); ``checkpoints``: ``parse_checkpoints``'s."""
    variant = VARIANTS[variant_name]
    checkpoint_dir = os.path.join(work_dir, "saved", run_id(variant_name, seed))
    return {
        "variant": variant_name, "model": variant.model, "dataset": name,
        "config": run_config(variant, name, data_path, seed, budget, checkpoint_dir, overrides),
        "config_files": [os.path.abspath(path) for path in args.config_files],
        "pretrained": checkpoint_of(variant, checkpoints),
        "stages": list(variant.stages), "pretrain_epochs": budget["s3rec_pretrain_epochs"],
    }


def last_error_line(error):
    lines = [line for line in error.splitlines() if line.strip() and not line.startswith("(exit status")]
    return lines[-1] if lines else error


def sweep(args, folder, name, out_dir, work_dir, checkpoints):
    """Run every planned (variant, seed) that has no finished record, writing each record as it ends."""
    budget = budget_of(args)
    overrides = parse_overrides(args.overrides)
    run_budget = dict(budget, overrides=overrides)
    pairs = plan(expand_variants(args.models, checkpoints), args.seeds, folder, name)
    data_path = prepare_working_copy(folder, os.path.join(work_dir, "data"))
    host = machine()
    print(f"{name}: {len(pairs)} runs, budget {budget}, overrides {overrides}, on {host['cpu']} ({host['cores']} cores)")
    for index, (variant_name, seed) in enumerate(pairs, 1):
        prefix = f"[{index}/{len(pairs)} {variant_name} seed {seed}]"
        record_path = os.path.join(out_dir, "runs", run_id(variant_name, seed) + ".json")
        done = finished(record_path)
        if done and extends(done["budget"], run_budget, VARIANTS[variant_name]):
            print(f"{prefix} finished earlier under budget {done['budget']}: going on under this one", flush=True)
        elif done:
            note = "" if done["budget"] == run_budget else f" (kept; its budget was {done['budget']})"
            print(f"{prefix} finished earlier, skipped{note}", flush=True)
            continue
        spec = run_spec(args, variant_name, seed, name, data_path, work_dir, budget, overrides, checkpoints)
        print(f"{prefix} running", flush=True)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        clock = perf_counter()
        summary, error = execute(spec, work_dir, args.threads, prefix)
        record = {"dataset": name, "variant": variant_name, "model": spec["model"], "seed": seed,
                  "status": "ok" if summary else "failed", "budget": run_budget, "config": spec["config"],
                  "pretrained": spec["pretrained"], "machine": host, "started": started, "seconds": perf_counter() - clock}
        record.update(summary or {"error": error})
        kept = done and not summary  # a failed extension keeps the finished record it set out from
        if not kept:
            atomic_write_json(record_path, record, indent=1)  # a killed sweep leaves no half "finished" record
        outcome = f"test NDCG@10 {summary['test']['ndcg@10']:.4f}" if summary else "FAILED: " + last_error_line(error)
        if kept:
            outcome += f" (its finished record under budget {done['budget']} is kept)"
        print(f"{prefix} done in {record['seconds']:.0f}s, {outcome}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    stop_on_sigterm()
    folder, name = resolve_dataset(args)
    out_dir = os.path.abspath(args.out or os.path.join(HERE, "results", name))
    work_dir = os.path.abspath(args.work or os.path.join(HERE, "work", name))
    for sub in (os.path.join(out_dir, "runs"), os.path.join(work_dir, "logs"), os.path.join(work_dir, "specs")):
        os.makedirs(sub, exist_ok=True)
    checkpoints = parse_checkpoints(args.pretrained)
    if not args.report_only:
        sweep(args, folder, name, out_dir, work_dir, checkpoints)
    print(write_reports(out_dir, name, expand_variants(args.models, checkpoints), draw=not args.no_plot))


if __name__ == "__main__":
    main()
