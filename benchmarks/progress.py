"""Where the unfinished runs of a sweep stand: the figures of a run stopped by a time budget before early
stopping ended it, read from its progress file.

    python benchmarks/progress.py --work benchmarks/work/toy-text-ids --out benchmarks/results/converged/toy-text-ids

A run of ``benchmarks/run.py`` keeps its progress after every validated epoch (``resume``) in
``<work>/saved/<variant>__seed<N>/*-progress.pth``; relaunching the sweep continues it. Until then, the
sweep's tables have no row for it, and a session that must stop still has to say how far it got. For
every such run that has no finished record in ``<out>/runs/``, this writes
``<out>/unfinished/<variant>__seed<N>.json`` and ``.md``: epochs run, the best validation epoch so far, the
early-stopping counter against the patience, the validation score per epoch, and the test metrics of the
best checkpoint so far (ranked afresh, RecBole's evaluator), all marked as not converged. A run that has
since finished loses its stale files, and an emptied ``unfinished/`` goes too. ``--work`` also serves as the
working directory of the evaluations.
"""
import argparse
import contextlib
import glob
import os

from recbole_missrec.atomic import atomic_write_json, atomic_open
from recbole_missrec.trainer import load_state
from reevaluate import evaluate_checkpoint
from run import finished, machine
from single_run import best_epoch


def unfinished_runs(work_dir):
    """(run id, progress file, its state) of every run under ``<work>/saved`` whose progress file says it
    has not ended."""
    for path in sorted(glob.glob(os.path.join(work_dir, "saved", "*", "*-progress.pth"))):
        state = load_state(path)
        if not state["finished"]:
            yield os.path.basename(os.path.dirname(path)), path, state


def summary(run, progress_path, state):
    """The figures of one unfinished run, its best checkpoint so far ranked on the test split."""
    history, config = state["history"], state["config"]
    variant, seed = run.rsplit("__seed", 1)
    return {
        "variant": variant, "seed": int(seed), "dataset": config["dataset"],
        "status": "unfinished: stopped before early stopping ended it, not converged",
        "epochs_run": len(history),
        "best_epoch": best_epoch(history, config["valid_metric_bigger"]),
        "best_valid_score": state["best_valid_score"],
        "epochs_without_improvement": state["cur_step"], "stopping_step": config["stopping_step"],
        "valid_metric": config["valid_metric"],
        "valid_score_per_epoch": {record["epoch"]: record["valid_score"] for record in history if "valid_score" in record},
        "test_of_best_checkpoint": evaluate_checkpoint(state["best_checkpoint"]),
        "train_seconds_per_epoch": sum(record["train_seconds"] for record in history) / max(len(history), 1),
        "progress_file": progress_path, "checkpoint": state["best_checkpoint"], "machine": machine(),
    }


def markdown(record):
    test = record["test_of_best_checkpoint"]
    scores = ", ".join(f"{epoch}: {score:.4f}" for epoch, score in record["valid_score_per_epoch"].items())
    return "\n".join([
        f"# {record['dataset']}: {record['variant']}, seed {record['seed']}: unfinished, not converged",
        "",
        f"{record['epochs_run']} epochs run; best valid {record['valid_metric']} {record['best_valid_score']:.4f} at "
        f"epoch {record['best_epoch']}; epochs since: {record['epochs_without_improvement']}, of the patience of "
        f"{record['stopping_step']}. Relaunching the sweep continues it. Test metrics of the best checkpoint so "
        f"far (true @K):",
        "",
        "| " + " | ".join(metric.upper() for metric in test) + " |",
        "|" + "---|" * len(test),
        "| " + " | ".join(f"{value:.4f}" for value in test.values()) + " |",
        "",
        f"Valid {record['valid_metric']} per epoch: {scores}.",
        "",
        f"- {record['train_seconds_per_epoch']:.0f} s per training epoch (mean of the epochs run); this report "
        f"written on {record['machine']['cpu']}, {record['machine']['cores']} cores",
        "",
    ])


def report(work_dir, out_dir):
    """Write the records of ``work_dir``'s unfinished runs into ``out_dir/unfinished``, drop those of runs
    that have finished (and the folder, once empty); returns the records written."""
    folder = os.path.join(out_dir, "unfinished")
    written = []
    for run, path, state in unfinished_runs(work_dir):
        if finished(os.path.join(out_dir, "runs", run + ".json")):
            continue
        record = summary(run, path, state)
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(os.path.join(folder, run + ".json"), record, indent=1)
        with atomic_open(os.path.join(folder, run + ".md"), "w") as handle:
            handle.write(markdown(record))
        written.append(record)
    for stale in glob.glob(os.path.join(folder, "*.json")):
        run = os.path.basename(stale)[: -len(".json")]
        if finished(os.path.join(out_dir, "runs", run + ".json")):
            os.remove(stale)
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale[: -len(".json")] + ".md")
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # only once nothing is left in it
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="the sweep's --work folder")
    parser.add_argument("--out", required=True, help="the sweep's --out folder")
    args = parser.parse_args(argv)
    work_dir, out_dir = os.path.abspath(args.work), os.path.abspath(args.out)
    with contextlib.chdir(work_dir):
        records = report(work_dir, out_dir)
    for record in records:
        print(f"{record['variant']} seed {record['seed']}: {record['epochs_run']} epochs, best epoch "
              f"{record['best_epoch']}, test {record['test_of_best_checkpoint']}")
    if not records:
        print(f"no unfinished run in {work_dir}")


if __name__ == "__main__":
    main()
