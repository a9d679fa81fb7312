"""Is a gap between two runs real? A paired comparison over the same test users.

    python benchmarks/paired.py --data_path /work/data \\
        --runs "scratch=benchmarks/results/converged/toy-text-scratch-moe-run2/runs/MISSRec-inductive__seed1.json" \\
               "pre-trained=benchmarks/results/converged/toy-text-moe-full-pt10/runs/MISSRec-inductive+pretrained__seed1.json" \\
        --out benchmarks/results/converged/toy-text-moe-paired

Seed stds say how much a run moves with its seed; they do not say whether two checkpoints differ on the
users at hand. Both runs' checkpoints are reloaded, every test row is ranked against all items
(``coldstart.target_ranks``, ties as a random order), and the per-row HIT@K and NDCG@K (``--topk``, 10 by
default) of the second run minus the first's give a mean difference, its standard error, a 95 % interval and
a two-sided p-value (the normal approximation of the paired t-test: thousands of rows). RecBole reports only
means, so the per-row figures are computed here. Both runs must be scored on the same rows (same dataset and
split); the script checks the targets match. Writes <out>/paired.json and paired.md. A work folder moved or
renamed whole since its runs is named with ``--moved OLD=NEW`` (records keep absolute checkpoint paths).

A label may name several runs, one per seed (``"scratch=seed1.json,seed2.json,seed3.json"``): each row's
figures are then the mean over that label's runs before the difference is taken, so the seeds' noise
shrinks the way the users' does. The interval is still over users, for these seeds: it says whether the
seed-averaged models differ on these users, not how a fourth seed would fall (the seed std says that).
"""
import argparse
import math
import os

import torch

from coldstart import K, reload_run, row_metrics, target_ranks
from recbole_missrec.atomic import atomic_open, atomic_write_json
from report import add_moved_option, moved_folders, read_run_record, relocated


def parse_run(text):
    """``LABEL=A.json[,B.json...]`` -> (label, [paths])."""
    label, separator, paths = text.partition("=")
    paths = [path for path in paths.split(",") if path]
    if not separator or not label or not paths:
        raise SystemExit(f"--runs takes LABEL=RUN_RECORD.json[,RUN_RECORD.json...], got {text!r}")
    return label, paths


def row_figures(record, data_path, topk):
    """(targets [N], {"hit@K" and "ndcg@K" for each K of ``topk``: per-row values [N]}) of one finished run's
    checkpoint on its test rows."""
    if not os.path.exists(record.get("checkpoint", "")):
        raise SystemExit(f"checkpoint {record.get('checkpoint')!r} of this run is gone: rerun it with "
                         "benchmarks/run.py (the same --work folder resumes it) before comparing, or name its "
                         "work folder's new place with --moved OLD=NEW")
    config, model, _, _, test_data = reload_run(record, data_path)
    ranks, ties, targets = target_ranks(model, test_data, config["device"])
    return targets, row_metrics(ranks, ties, topk)


def same_rows(targets, *others):
    """Pairing is per row: every run must have ranked the same targets in the same order."""
    if not all(torch.equal(targets, other) for other in others):
        raise SystemExit("the runs were not scored on the same test rows: compare runs of one dataset and split")


def seed_mean(figures):
    """One (targets, rows) pair of several runs' (targets, rows): each row's figures averaged over the runs."""
    targets = figures[0][0]
    same_rows(targets, *(other for other, _ in figures[1:]))
    return targets, {key: torch.stack([rows[key] for _, rows in figures]).mean(dim=0) for key in figures[0][1]}


def paired_difference(first, second):
    """Mean of ``second - first`` over paired rows, its standard error, 95 % interval, two-sided p-value."""
    delta = (second - first).double()
    n = delta.numel()
    mean = delta.mean().item()
    error = delta.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    z = mean / error if error > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {"mean": mean, "stderr": error, "low": mean - 1.96 * error, "high": mean + 1.96 * error,
            "p": math.erfc(abs(z) / math.sqrt(2)), "rows": n,
            "better": int((delta > 0).sum()), "worse": int((delta < 0).sum())}


def compare(first, second):
    """{metric: means of both and their paired difference} of two (targets, rows) pairs."""
    (targets_a, rows_a), (targets_b, rows_b) = first, second
    same_rows(targets_a, targets_b)
    return {key: {"first": rows_a[key].mean().item(), "second": rows_b[key].mean().item(),
                  **paired_difference(rows_a[key], rows_b[key])} for key in rows_a}


def markdown(labels, result, seeds=(1, 1)):
    averaged = "" if seeds == (1, 1) else f" Each row's figures are the mean over {seeds[0]} and {seeds[1]} runs."
    lines = [f"Paired over the same test rows: {labels[1]} minus {labels[0]}.{averaged}", "",
             f"| metric | {labels[0]} | {labels[1]} | difference | 95 % interval | p | rows better / worse / equal |",
             "|---|---|---|---|---|---|---|"]
    for key, row in result.items():
        equal = row["rows"] - row["better"] - row["worse"]
        lines.append(f"| {key.upper()} | {row['first']:.4f} | {row['second']:.4f} | {row['mean']:+.4f} "
                     f"| {row['low']:+.4f} to {row['high']:+.4f} | {row['p']:.3f} "
                     f"| {row['better']} / {row['worse']} / {equal} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs=2, required=True, metavar="LABEL=RUN_RECORD.json[,RUN_RECORD.json...]")
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--topk", type=int, nargs="+", default=[K], metavar="K",
                        help=f"the cut-offs of HIT and NDCG (default {K}, the bucket tables' cut-off; e.g. 10 50)")
    add_moved_option(parser)
    args = parser.parse_args(argv)
    moves = moved_folders(args.moved)
    runs = [parse_run(text) for text in args.runs]
    if runs[0][0] == runs[1][0]:
        raise SystemExit(f"--runs: give the two runs different labels, both are {runs[0][0]!r}")
    if min(args.topk) < 1:
        raise SystemExit(f"--topk takes cut-offs of 1 or more, got {args.topk}")
    figures = [seed_mean([row_figures(relocated(read_run_record(path), moves), args.data_path, args.topk)
                          for path in paths]) for _, paths in runs]
    result = compare(*figures)
    labels = [label for label, _ in runs]
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "paired.json"),
                      {"runs": dict(runs), "metrics": result})
    text = markdown(labels, result, tuple(len(paths) for _, paths in runs))
    with atomic_open(os.path.join(args.out, "paired.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
