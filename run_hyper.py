"""Hyper-parameter search over a plugin model (or any of RecBole's) with RecBole's HyperTuning.

    python run_hyper.py --model=MISSRec --dataset=Scientific_mm_subset --data_path=../shared/data \
        --params_file=hyper/MISSRec.hyper --output_file=hyper_MISSRec.result

The search space file has RecBole's format, one parameter per line: ``name choice [v1,v2,...]`` (or
``uniform``, ``loguniform``, ``quniform``; see RecBole's docs). Every other ``--key=value`` is a fixed
setting of every trial, as in ``run_recbole_missrec.py``. Needs hyperopt (``pip install .[hyper]``).
"""
import argparse

from recbole.trainer import HyperTuning

from recbole_missrec import distributed
from recbole_missrec.quick_start import objective_function


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_files", default=None, help="space-separated fixed .yaml files")
    parser.add_argument("--params_file", required=True, help="search space, RecBole's HyperTuning format")
    parser.add_argument("--output_file", default="hyper_example.result", help="where the results are written")
    parser.add_argument("--display_file", default=None, help="optional html plot of the search")
    parser.add_argument("--algo", default="exhaustive", choices=("exhaustive", "random", "bayes"),
                        help="search algorithm (default exhaustive)")
    parser.add_argument("--max_evals", type=int, default=100, help="trials at most (default 100)")
    parser.add_argument("--early_stop", type=int, default=10, help="stop after this many trials without gain")
    args, _ = parser.parse_known_args()
    return args


def main():
    args = parse_args()
    files = args.config_files.split() if args.config_files else None
    tuner = HyperTuning(objective_function, algo=args.algo, early_stop=args.early_stop, max_evals=args.max_evals,
                        params_file=args.params_file, fixed_config_file_list=files, display_file=args.display_file)
    try:
        tuner.run()
    finally:
        distributed.shutdown()
    tuner.export_result(output_file=args.output_file)
    print("best params:", tuner.best_params)
    print("best result:", tuner.params2result[tuner.params2str(tuner.best_params)])


if __name__ == "__main__":
    main()
