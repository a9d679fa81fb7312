"""One table from several ``run.py`` output folders: ablations, scratch against pre-trained, converged rows.

    python benchmarks/compare.py --rows scratch=benchmarks/results/ablation/Scientific/scratch \\
        defaults=benchmarks/results/ablation/Scientific/defaults --out benchmarks/results/ablation/Scientific

Each row is ``LABEL=FOLDER`` (the folder's only variant) or ``LABEL=FOLDER:VARIANT``. Every row shows test
metrics as mean ± sample std over its seeds, ``@11`` columns where the runs evaluated ``topk`` 11 and 51 (the
labelling of MISSRec's reference evaluator), and the difference of its mean NDCG@10 from the first row's,
marked ``*`` where it exceeds both rows' seed std. ``run.py`` writes one folder per setting; this script only
reads their ``runs/*.json``. Writes <out>/comparison.md and comparison.json.

``--refresh`` rebuilds <out>'s table from the rows its comparison.json lists (labels, folders, variants),
so a table of many rows picks up seeds added to its folders without retyping the command:

    python benchmarks/compare.py --refresh --out benchmarks/results/converged/Scientific-all

``--add`` does the same and puts new rows in: after the row ``--after`` names, or last; a row whose label is
already listed is replaced where it stands, so a setting that moved to a new folder keeps its place:

    python benchmarks/compare.py --add "MISSRec, text+image=benchmarks/results/converged/Scientific-mm" \\
        --after "MISSRec, text" --out benchmarks/results/converged/Scientific-all
"""
import argparse
import json
import os
from statistics import mean, stdev

from report import RESUMED_NOTE, by_variant, figure_cell, load_runs, mean_std, read_own_json, resumed, write_results

METRICS = ["hit@10", "ndcg@10", "hit@11", "ndcg@11", "hit@50", "ndcg@50", "ndcg@51"]
FIGURES = [("best_epoch", "best epoch", "{:.1f}"), ("epochs_run", "epochs run", "{:.1f}"),
           ("cpu_seconds", "CPU s / run", "{:.0f}"), ("epoch_seconds", "train+eval s / run", "{:.0f}"),
           ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
           ("trainable_params", "trainable params", "{:,.0f}")]


def parse_row(text):
    label, separator, location = text.partition("=")
    if not separator or not label:
        raise SystemExit(f"--rows and --add take LABEL=FOLDER[:VARIANT], got {text!r}")
    folder, _, variant = location.partition(":")
    return label, folder, variant or None


def listed_rows(out):
    """(label, folder, variant) of every row of an earlier comparison written to ``out``."""
    path = os.path.join(out, "comparison.json")
    try:
        return read_own_json(path, lambda data: [(row["label"], row["folder"], row["variant"]) for row in data["rows"]],
                             "a comparison.json written by compare.py", "rebuild it with --rows LABEL=FOLDER[:VARIANT] ...")
    except FileNotFoundError:
        raise SystemExit(f"{path} does not exist: build the table once with --rows LABEL=FOLDER[:VARIANT] ...")


def with_added(listed, added, after=None):
    """The rows of ``listed`` with ``added`` put in: one whose label is listed replaces that row in place,
    the others go after the row labelled ``after`` (in their order), or last without it."""
    rows = list(listed)
    labels = [label for label, _, _ in rows]
    if after is not None and after not in labels:
        raise SystemExit(f"--after {after!r} is not a row of the table; its rows are {labels}")
    position = labels.index(after) + 1 if after is not None else len(rows)
    for row in added:
        labels = [label for label, _, _ in rows]
        if row[0] in labels:
            rows[labels.index(row[0])] = row
        else:
            rows.insert(position, row)
            position += 1
    return rows


def row_runs(folder, variant):
    """The finished runs of one row; the folder must hold one variant unless ``variant`` names it."""
    groups = dict(by_variant(load_runs(folder), []))
    if not groups:
        raise SystemExit(f"{folder}: no finished runs in {os.path.join(folder, 'runs')}")
    if variant is None:
        if len(groups) > 1:
            raise SystemExit(f"{folder} holds {sorted(groups)}: name one as {folder}:VARIANT")
        variant = next(iter(groups))
    if variant not in groups:
        raise SystemExit(f"{folder} has no finished runs of {variant!r}; it has {sorted(groups)}")
    return variant, groups[variant]


def summary(label, folder, variant, runs):
    metrics = {key: [run["test"][key] for run in runs if key in run["test"]] for key in METRICS}
    return {"label": label, "folder": folder, "variant": variant, "seeds": [run["seed"] for run in runs],
            "test": {key: values for key, values in metrics.items() if values},
            "figures": {key: [run.get(key) for run in runs] for key, _, _ in FIGURES},
            "resumed": any(map(resumed, runs)), "budget": runs[0]["budget"]}


def difference(row, reference, key="ndcg@10"):
    """(mean difference from the reference row, whether it exceeds both rows' seed std)."""
    ours, theirs = row["test"][key], reference["test"][key]
    delta = mean(ours) - mean(theirs)
    spread = max(stdev(values) if len(values) > 1 else 0.0 for values in (ours, theirs))
    return delta, len(ours) > 1 and len(theirs) > 1 and abs(delta) > spread


def markdown(rows):
    metrics = [key for key in METRICS if all(key in row["test"] for row in rows)]
    header = ["setting", "seeds"] + [key.upper() for key in metrics]
    header += [f"Δ NDCG@10 vs {rows[0]['label']}"] + [label for _, label, _ in FIGURES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        delta, beyond = difference(row, rows[0])
        cells = [row["label"], ", ".join(map(str, row["seeds"]))]
        cells += [mean_std(row["test"][key]) for key in metrics]
        cells.append("–" if row is rows[0] else f"{delta:+.4f}{' *' if beyond else ''}")
        cells += [figure_cell(key, row["figures"][key], fmt, row["resumed"]) for key, _, fmt in FIGURES]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["`*`: the difference exceeds the seed std of both rows."]
    if any(row["resumed"] for row in rows):
        notes.append(RESUMED_NOTE)
    notes += [f"{row['label']}: `{row['variant']}` from `{row['folder']}`, budget `{json.dumps(row['budget'], sort_keys=True)}`" for row in rows]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rows", nargs="+", metavar="LABEL=FOLDER[:VARIANT]")
    source.add_argument("--refresh", action="store_true", help="the rows of <out>/comparison.json")
    source.add_argument("--add", nargs="+", metavar="LABEL=FOLDER[:VARIANT]",
                        help="the rows of <out>/comparison.json and these")
    parser.add_argument("--after", metavar="LABEL", help="with --add: the row the new rows follow (default: last)")
    parser.add_argument("--out", required=True, help="folder for comparison.md and comparison.json")
    args = parser.parse_args(argv)
    if args.after is not None and not args.add:
        parser.error("--after goes with --add")
    if args.add:
        specs = with_added(listed_rows(args.out), [parse_row(text) for text in args.add], args.after)
    else:
        specs = listed_rows(args.out) if args.refresh else [parse_row(text) for text in args.rows]
    rows = []
    for label, folder, variant in specs:
        variant, runs = row_runs(folder, variant)
        rows.append(summary(label, folder, variant, runs))
    write_results(args.out, "comparison", {"rows": rows}, markdown(rows))
    return rows


if __name__ == "__main__":
    main()
