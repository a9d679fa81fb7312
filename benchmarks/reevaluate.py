"""Test metrics a finished sweep's records lack, evaluated again from the runs' own checkpoints.

    python benchmarks/reevaluate.py benchmarks/results/converged/Scientific-text-scratch \\
        --work benchmarks/work/reevaluate

Records written before ``single_run.py`` kept every metric a run evaluated hold only HIT/NDCG@10 and @50,
though the runs ranked @11 and @51 too (their ``topk``); retraining to recover them would cost each whole
run. Each run's best checkpoint (``checkpoint`` in its record) is reloaded instead (``load_data_and_model``)
and its test split ranked again under the run's own config, with ``--topk`` if given. Every metric the
record already holds must come out identical (RecBole rounds to 4 decimals): otherwise the checkpoint is
not the one that produced the record, and nothing is written. The missing metrics are added to
``runs/<variant>__seed<N>.json`` (atomically), then the folder's results.json and table.md are rebuilt.
``--work`` is the working directory of the evaluations (RecBole writes log/ there). A work folder moved or
renamed whole since the runs is named with ``--moved OLD=NEW``: the checkpoint and data are read from the new
place, and the record keeps the paths its run wrote, as the other readers leave them.
"""
import argparse
import contextlib
import os

from recbole_missrec.atomic import atomic_write_json
from recbole_missrec.quick_start import load_data_and_model
from recbole_missrec.trainer import PluginTrainer
from report import add_moved_option, load_runs, moved_folders, relocated, write_reports
from run import run_id


def evaluate_checkpoint(checkpoint, topk=None, data_path=None):
    """The test metrics of a checkpoint, ranked afresh (RecBole's evaluator and rounding); ``data_path``: where
    its data lives now (default: as stored in it)."""
    overrides = {"checkpoint_dir": os.path.dirname(checkpoint)}  # the trainer creates it: not at a record's old place
    if topk:
        overrides["topk"] = list(topk)
    config, model, _, _, _, test_data = load_data_and_model(checkpoint, data_path=data_path, config_dict=overrides)
    return {metric: float(value) for metric, value in
            PluginTrainer(config, model).evaluate(test_data, load_best_model=False, show_progress=False).items()}


def completed_test(record, fresh):
    """The record's test metrics plus the fresh ones it lacks; raises if a metric it holds differs."""
    differing = {metric: (value, fresh.get(metric)) for metric, value in record["test"].items() if fresh.get(metric) != value}
    if differing:
        raise SystemExit(f"{record['variant']} seed {record['seed']}: {record['checkpoint']} does not reproduce the "
                         f"recorded test metrics {differing} (recorded, re-evaluated); its record is left as it is")
    return dict(record["test"], **{metric: value for metric, value in fresh.items() if metric not in record["test"]})


def reevaluate(out_dir, topk=None, moves=(), data_path=None):
    """Complete every finished record of ``out_dir`` from its checkpoint (found under ``moves``); returns the
    (variant, seed, added metrics) of the records that changed."""
    changed = []
    for record in load_runs(out_dir):
        if record["status"] != "ok":
            continue
        found = relocated(record, moves)
        if not os.path.exists(found["checkpoint"]):
            raise SystemExit(f"{record['variant']} seed {record['seed']}: its checkpoint {found['checkpoint']} is "
                             "missing; if its work folder was moved or renamed whole, name the new place with --moved OLD=NEW")
        fresh = evaluate_checkpoint(found["checkpoint"], topk, data_path or found["config"]["data_path"])
        test = completed_test(record, fresh)
        added = sorted(set(test) - set(record["test"]))
        if added:
            path = os.path.join(out_dir, "runs", run_id(record["variant"], record["seed"]) + ".json")
            atomic_write_json(path, dict(record, test=test), indent=1)
            changed.append((record["variant"], record["seed"], added))
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="a sweep's output folder (holding runs/*.json)")
    parser.add_argument("--topk", type=int, nargs="+", default=None, help="cut-offs to evaluate (default: each run's own)")
    parser.add_argument("--work", default=None, help="working directory of the evaluations (default: the current one)")
    parser.add_argument("--data_path", help="folder holding the runs' datasets now (default: as recorded)")
    add_moved_option(parser)
    args = parser.parse_args(argv)
    moves = moved_folders(args.moved)
    out_dir = os.path.abspath(args.out)
    runs = load_runs(out_dir)
    if not runs:
        raise SystemExit(f"{out_dir} holds no runs/*.json: pass the --out folder of a benchmarks/run.py sweep")
    if args.work:
        os.makedirs(args.work, exist_ok=True)
    with contextlib.chdir(args.work or os.getcwd()):
        changed = reevaluate(out_dir, args.topk, moves, args.data_path)
    for variant, seed, added in changed:
        print(f"{variant} seed {seed}: added {', '.join(added)}")
    print(write_reports(out_dir, runs[0]["dataset"], list(dict.fromkeys(run["variant"] for run in runs)), draw=False))


if __name__ == "__main__":
    main()
