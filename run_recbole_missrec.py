"""Train and evaluate a model: the plugin's (MISSRec) or any of RecBole's (SASRec, GRU4Rec, ...).

Any RecBole setting can follow as --key=value (for example --epochs=50 --hidden_size=300).

MISSRec's two stages:
  pre-train:  run_recbole_missrec.py -d <merged set> --train_stage=pretrain [--resume]
  fine-tune:  run_recbole_missrec.py -d Scientific --train_stage=inductive_ft --pretrained saved/<ckpt>.pth
              (--freeze_backbone=False trains every weight instead of adapters, LayerNorm, fusion and IDs)
MSM4SR (alias MP4SR), in-domain as in its paper:
  pre-train:  run_recbole_missrec.py -m MSM4SR -d <dataset> --train_stage=pretrain   (kept by validation)
  fine-tune:  run_recbole_missrec.py -m MSM4SR -d <dataset> --pretrained saved/<ckpt>.pth
              (--train_stage=inductive_ft: no item IDs; without --pretrained: trained from scratch)
Data-parallel: torchrun --nproc_per_node N run_recbole_missrec.py ... (gloo on CPU, nccl on GPU).
"""
import argparse

from recbole_missrec import distributed
from recbole_missrec.quick_start import run_recbole_missrec


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="MISSRec", help="model name (plugin first, then RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: RecBole's bundled ml-100k)")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (RecBole's data_path)")
    parser.add_argument("--config_files", default=None, help="space-separated extra .yaml files")
    parser.add_argument("--pretrained", default=None, metavar="PATH", help="fine-tune from this pre-trained checkpoint")
    parser.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PATH",
        help="pre-training: continue from PATH, or without PATH from this run's latest checkpoint; training with "
             "validation: keep progress after every epoch and continue from it (PATH: that progress file)",
    )
    args, _ = parser.parse_known_args()
    return args


def main():
    args = parse_args()
    config_dict = {"data_path": args.data_path} if args.data_path else None
    files = args.config_files.split() if args.config_files else None
    try:
        run_recbole_missrec(
            model=args.model, dataset=args.dataset, config_file_list=files, config_dict=config_dict,
            pretrained=args.pretrained, resume=args.resume,
        )
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
