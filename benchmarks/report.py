"""Turn the per-run records of one output folder into results.json, table.md and benchmark.png."""
import glob
import json
import os
from statistics import mean, stdev

import yaml

from recbole_missrec.atomic import atomic_open, atomic_write_json
from recbole_missrec.paths import properties_dir

METRIC_COLUMNS = [("hit@10", "HIT@10"), ("ndcg@10", "NDCG@10"), ("hit@50", "HIT@50"), ("ndcg@50", "NDCG@50")]
FIGURE_COLUMNS = [
    ("best_epoch", "best epoch", "{:.1f}"),
    ("epochs_run", "epochs run", "{:.1f}"),
    ("train_seconds_per_epoch", "s / train epoch", "{:.1f}"),
    ("eval_seconds", "eval s", "{:.1f}"),
    ("cpu_seconds", "CPU s / run", "{:.0f}"),
    ("epoch_seconds", "train+eval s / run", "{:.0f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("trainable_params", "trainable params", "{:,.0f}"),
]


def protocol_defaults():
    """``properties/overall.yaml``, the protocol every run shares: what a record leaves to its defaults."""
    with open(os.path.join(properties_dir(), "overall.yaml")) as handle:
        return yaml.safe_load(handle)


def epoch_seconds(history):
    """Every epoch's training + validation wall seconds: unlike a process's CPU time, the whole of a run
    resumed over several sittings."""
    return sum(record["train_seconds"] + record.get("valid_seconds", 0.0) for record in history)


# Figures a run's last process measures alone (user + system time, ru_maxrss): of a resumed run, its last sitting.
PROCESS_FIGURES = {"cpu_seconds", "peak_rss_mb"}
RESUMED_MARK = " (a)"
RESUMED_NOTE = ("(a): a run resumed in a later process (`--resume`, or the sweep relaunched): its CPU s and peak RSS "
                "cover that last process only, its train+eval s every epoch")


def resumed(run):
    """Whether a later process continued the run: the trainer marks the first epoch each resume trains."""
    return any(record.get("resumed") for record in run.get("history") or [])


def figure_cell(key, values, fmt, any_resumed):
    """One mean ± std cell of a figure column; a figure of the last process alone marked where a run was resumed."""
    cell = mean_std(values, fmt)
    return cell + RESUMED_MARK if key in PROCESS_FIGURES and any_resumed else cell


def read_own_json(path, extract, what, fix):
    """``extract`` applied to the JSON file at ``path``, one the benchmark scripts wrote. A file that is not
    ``what`` ends the script naming it and the ``fix`` (nothing is written first); a missing file raises
    FileNotFoundError, which the caller may allow."""
    with open(path) as handle:
        try:
            return extract(json.load(handle))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise SystemExit(f"{path} is not {what} ({error!r}): {fix}") from error


def json_object(data):
    """``data`` when it is a JSON object; TypeError otherwise, which ``read_own_json`` turns into its message
    (a file holding a list or a number would otherwise fail later, far from its name)."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, found {type(data).__name__}")
    return data


def write_results(out, stem, data, text):
    """<out>/<stem>.json (``data``) and <stem>.md (``text``), each replaced whole, and ``text`` printed."""
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{stem}.json"), data, indent=1)
    with atomic_open(os.path.join(out, f"{stem}.md"), "w") as handle:
        handle.write(text)
    print(text)


def read_run_record(path):
    """The run record at ``path``, one run.py wrote; a corrupt one ends the script naming it."""
    return read_own_json(path, json_object, "a run record of run.py",
                         "restore it from git, or delete it and run the sweep again (that run is retrained)")


def moved_folders(pairs):
    """``--moved OLD=NEW`` values -> [(old, new)] absolute folder pairs."""
    moves = []
    for text in pairs:
        old, separator, new = text.partition("=")
        if not separator or not old or not new:
            raise SystemExit(f"--moved takes OLD_FOLDER=NEW_FOLDER (a work folder moved or renamed whole), "
                             f"got {text!r}")
        moves.append((os.path.abspath(old), os.path.abspath(new)))
    return moves


def add_moved_option(parser):
    parser.add_argument("--moved", nargs="+", default=[], metavar="OLD=NEW",
                        help="a work folder since moved or renamed whole: the runs' records still name OLD")


def moved_path(path, moves):
    """``path`` under the new place of the first of ``moves`` that holds it; unchanged where none does."""
    for old, new in moves:
        inside = os.path.relpath(path, old)
        if inside != os.pardir and not inside.startswith(os.pardir + os.sep):
            return os.path.normpath(os.path.join(new, inside))
    return path


def relocated(record, moves):
    """``record`` with the paths a reader reloads from (its checkpoint, its data folder) under their moved folders.
    Records keep the absolute paths their run wrote, so a work folder moved or renamed whole is found only when
    the reader is told (``--moved OLD=NEW``); the old place is never looked at, since a later run may have taken
    its name."""
    if not moves:
        return record
    record = dict(record)
    if record.get("checkpoint"):
        record["checkpoint"] = moved_path(record["checkpoint"], moves)
    if record.get("config", {}).get("data_path"):
        record["config"] = dict(record["config"], data_path=moved_path(record["config"]["data_path"], moves))
    return record


def load_runs(out_dir):
    """The run records of ``out_dir``; records written before they carried ``epoch_seconds`` get it from
    their history."""
    runs = []
    for path in sorted(glob.glob(os.path.join(out_dir, "runs", "*.json"))):
        run = read_run_record(path)
        if "epoch_seconds" not in run and run.get("history"):
            run["epoch_seconds"] = epoch_seconds(run["history"])
        runs.append(run)
    return runs


def by_variant(runs, order):
    """Finished runs grouped by variant, in the order given (then any others, alphabetically)."""
    groups = {}
    for run in runs:
        if run["status"] == "ok":
            groups.setdefault(run["variant"], []).append(run)
    names = [name for name in order if name in groups] + sorted(set(groups) - set(order))
    return [(name, sorted(groups[name], key=lambda run: run["seed"])) for name in names]


def mean_std(values, fmt="{:.4f}"):
    """'mean ± std' (sample std) over seeds; a single value is shown alone."""
    values = [value for value in values if value is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(mean(values))} ± {fmt.format(stdev(values))}"


def budgets(runs):
    return sorted({json.dumps(run["budget"], sort_keys=True) for run in runs if run["status"] == "ok"})


def machines(runs):
    """One line per machine the finished runs ran on, told apart by the fields the line shows: sittings on
    the same kind of machine differ in their kernel build, which is no reason to repeat the line."""
    threads = run_threads(runs)
    return sorted({machine_line(run["machine"], threads) for run in runs if run["status"] == "ok"})


def machine_line(m, threads):
    device = m["gpu"] or f"CPU only, {threads} thread(s) per run"
    return f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {device}; torch {m['torch']}"


def run_threads(runs):
    return ", ".join(sorted({str(run.get("torch_threads")) for run in runs if run["status"] == "ok"}))


def markdown_table(runs, order):
    header = ["model", "seeds"] + [label for _, label in METRIC_COLUMNS] + [label for _, label, _ in FIGURE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in by_variant(runs, order):
        cells = [name, ", ".join(str(run["seed"]) for run in group)]
        cells += [mean_std([run["test"][key] for run in group]) for key, _ in METRIC_COLUMNS]
        any_resumed = any(map(resumed, group))
        cells += [figure_cell(key, [run.get(key) for run in group], fmt, any_resumed) for key, _, fmt in FIGURE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [run for run in runs if run["status"] != "ok"]
    notes = ["Mean ± sample std over seeds; test metrics at the best validation epoch (valid metric NDCG@10)."]
    if any(map(resumed, runs)):
        notes.append(RESUMED_NOTE)
    notes += [f"Budget: `{budget}`" for budget in budgets(runs)]
    notes += [f"Machine: {machine}" for machine in machines(runs)]
    notes += [f"Failed: {run['variant']} seed {run['seed']} ({run['error'].splitlines()[-1][:120]})" for run in failed]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def mean_curve(group):
    """Per-epoch mean validation score over the seeds that reached that epoch."""
    scores = {}
    for run in group:
        for record in run["history"]:
            if "valid_score" in record:
                scores.setdefault(record["epoch"], []).append(record["valid_score"])
    epochs = sorted(scores)
    return epochs, [mean(scores[epoch]) for epoch in epochs]


def pyplot():
    """matplotlib, imported when a plot is drawn, so that the harness (and its --help) runs without it."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plots need matplotlib: pip install 'recbole-missrec[bench]' (or rerun with --no-plot)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(runs, order, path, title):
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    groups = by_variant(runs, order)
    figure, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [name for name, _ in groups]
    values = [[run["test"]["ndcg@10"] for run in group] for _, group in groups]
    errors = [stdev(v) if len(v) > 1 else 0.0 for v in values]
    bars.bar(range(len(names)), [mean(v) for v in values], yerr=errors, capsize=4, color="tab:blue")
    bars.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    bars.set_ylabel("test NDCG@10 (mean ± std over seeds)")
    for name, group in groups:
        curves.plot(*mean_curve(group), marker=".", label=name)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation NDCG@10 (mean over seeds)")
    curves.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def write_reports(out_dir, dataset, order, draw=True):
    """Assemble results.json, table.md and (``draw``) benchmark.png from runs/*.json. Returns the table."""
    runs = load_runs(out_dir)
    atomic_write_json(os.path.join(out_dir, "results.json"), {"dataset": dataset, "runs": runs}, indent=1)
    table = markdown_table(runs, order)
    with atomic_open(os.path.join(out_dir, "table.md"), "w") as handle:
        handle.write(f"# {dataset}\n\n" + table)
    if draw and any(run["status"] == "ok" for run in runs):
        plot(runs, order, os.path.join(out_dir, "benchmark.png"), dataset)
    return table
