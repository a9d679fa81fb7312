"""Validation curves of several runs side by side, epoch by epoch, against the first.

    C=benchmarks/results/converged
    python benchmarks/curves.py --runs "scratch=$C/toy-text-scratch-moe/unfinished/MISSRec-inductive__seed1.json" \\
        "full, from epoch 10=$C/toy-text-moe-full-pt10/unfinished/MISSRec-inductive+pretrained__seed1.json" \\
        --out $C/toy-text-moe-curves

A converged table compares runs at their best checkpoints. A run a time budget stopped has no such row, and
while runs are still learning the fair comparison is at equal epochs: a variant that starts lower and
learns faster, or the other way round, shows only there. Each ``--runs`` entry is ``LABEL=RECORD``, a run
record ``run.py`` wrote (``<out>/runs/<variant>__seed<N>.json``, its ``history``) or one ``progress.py``
wrote for an unfinished run (``<out>/unfinished/...json``, its ``valid_score_per_epoch``); all must be
scored by the same validation metric. Writes <out>/curves.json and curves.md: every run's score at every
epoch, and for each run against the first over the epochs both ran the mean, smallest and largest
difference and how many of those epochs it leads, ties or trails. ``--every N`` shortens curves.md for long
runs: every N-th epoch's row and each run's best and last (curves.json and the differences keep every epoch).
"""
import argparse
import os
from statistics import mean

from recbole_missrec.atomic import atomic_open, atomic_write_json
from report import protocol_defaults, read_own_json


def parse_entry(text):
    label, separator, path = text.partition("=")
    if not separator or not label or not path:
        raise SystemExit(f"--runs takes LABEL=RECORD (a run's .json), got {text!r}")
    return label, path


def curve_of(record):
    """(validation metric, {epoch: score}) of a finished record (its history) or an unfinished one."""
    if "history" in record:  # a finished record names the metric only where the sweep overrode it
        metric = record["config"].get("valid_metric") or protocol_defaults()["valid_metric"]
        return metric, {entry["epoch"]: entry["valid_score"] for entry in record["history"] if "valid_score" in entry}
    return record["valid_metric"], {int(epoch): score for epoch, score in record["valid_score_per_epoch"].items()}


def valid_curve(path):
    """The validation metric and curve of the record at ``path``, epochs in order."""
    records = "<out>/runs/*.json or <out>/unfinished/*.json"
    try:
        metric, scores = read_own_json(path, curve_of, "a run record of run.py or progress.py", f"name {records}")
    except FileNotFoundError:
        raise SystemExit(f"{path} does not exist: name a run record, {records}")
    if not scores:
        raise SystemExit(f"{path} holds no validated epoch yet")
    return metric, dict(sorted(scores.items()))


def against(curve, reference):
    """The differences of ``curve`` from ``reference`` over the epochs both ran; None if they share none."""
    epochs = sorted(set(curve) & set(reference))
    if not epochs:
        return None
    deltas = [curve[epoch] - reference[epoch] for epoch in epochs]
    return {"epochs": [epochs[0], epochs[-1]], "mean": mean(deltas), "min": min(deltas), "max": max(deltas),
            "leads": sum(delta > 0 for delta in deltas), "ties": sum(delta == 0 for delta in deltas),
            "trails": sum(delta < 0 for delta in deltas)}


def shown_epochs(runs, every):
    """Every ``every``-th epoch any run validated, and each run's best and last epoch."""
    epochs = set().union(*(run["curve"] for run in runs))
    kept = {epoch for epoch in epochs if epoch % every == 0}
    for run in runs:
        kept |= {max(run["curve"], key=run["curve"].get), max(run["curve"])}
    return sorted(kept)


def markdown(metric, runs, every=1):
    labels = [run["label"] for run in runs]
    epochs = shown_epochs(runs, every)
    which = "per epoch" if every == 1 else f"every {every} epochs, with each run's best and last"
    lines = [f"Valid {metric} {which} (`–`: not run).", "",
             "| epoch | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for epoch in epochs:
        cells = [f"{run['curve'][epoch]:.4f}" if epoch in run["curve"] else "–" for run in runs]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += ["", f"Against {labels[0]}, over the epochs both ran:", "",
              "| run | epochs | mean Δ | smallest Δ | largest Δ | leads / ties / trails |", "|---|---|---|---|---|---|"]
    for run in runs[1:]:
        diff = run["against_first"]
        if diff is None:
            lines.append(f"| {run['label']} | none in common | – | – | – | – |")
            continue
        lines.append(f"| {run['label']} | {diff['epochs'][0]}-{diff['epochs'][1]} | {diff['mean']:+.4f} | "
                     f"{diff['min']:+.4f} | {diff['max']:+.4f} | {diff['leads']} / {diff['ties']} / {diff['trails']} |")
    lines += [""] + [f"- {run['label']}: `{run['record']}`" for run in runs]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="LABEL=RECORD",
                        help="run records; the first is the reference")
    parser.add_argument("--out", required=True, help="folder for curves.json and curves.md")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="curves.md shows every N-th epoch and each run's best and last (default: all)")
    args = parser.parse_args(argv)
    if args.every < 1:
        raise SystemExit(f"--every takes a positive number of epochs, got {args.every}")
    if len(args.runs) < 2:
        raise SystemExit("--runs needs at least two records: a reference and a run to compare with it")
    runs, metrics = [], {}
    for label, path in map(parse_entry, args.runs):
        metric, curve = valid_curve(path)
        metrics.setdefault(metric, []).append(path)
        runs.append({"label": label, "record": path, "curve": curve})
    if len(metrics) > 1:
        raise SystemExit(f"the records are scored by different validation metrics: {metrics}")
    for run in runs:
        run["against_first"] = against(run["curve"], runs[0]["curve"])
    metric = next(iter(metrics))
    text = markdown(metric, runs, args.every)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "curves.json"), {"valid_metric": metric, "runs": runs}, indent=1)
    with atomic_open(os.path.join(args.out, "curves.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
