"""Train and evaluate a model: the plugin's (MISSRec) or any of RecBole's (SASRec, GRU4Rec, ...).

Any RecBole setting can follow as --key=value (for example --epochs=50 --hidden_size=300).
"""
import argparse

from recbole_missrec.quick_start import run_recbole_missrec


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="MISSRec", help="model name (plugin first, then RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: RecBole's bundled ml-100k)")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (RecBole's data_path)")
    parser.add_argument("--config_files", default=None, help="space-separated extra .yaml files")
    args, _ = parser.parse_known_args()
    return args


def main():
    args = parse_args()
    config_dict = {"data_path": args.data_path} if args.data_path else None
    files = args.config_files.split() if args.config_files else None
    run_recbole_missrec(model=args.model, dataset=args.dataset, config_file_list=files, config_dict=config_dict)


if __name__ == "__main__":
    main()
