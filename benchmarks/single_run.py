"""One benchmark run in its own process: ``python single_run.py SPEC.json RESULT.json``.

A fresh process per run because RecBole's Config, logging and global seeds make repeated runs in one
process fragile, and because peak resident memory (``ru_maxrss``) is only per run when the process is.
The parent (run.py) sets the working directory, so RecBole's log/ and saved/ land in the work folder.
"""
import json
import resource
import sys
from statistics import mean
from time import perf_counter

import torch

from recbole_missrec.atomic import atomic_write_json
from recbole_missrec.quick_start import run_recbole_missrec

METRICS = ("hit@10", "ndcg@10", "hit@50", "ndcg@50")


def best_epoch(history, bigger=True):
    """Epoch of the best validation score (the first one on ties, as RecBole's early stopping keeps)."""
    scored = [record for record in history if "valid_score" in record]
    if not scored:
        return None
    best = (max if bigger else min)(record["valid_score"] for record in scored)
    return next(record["epoch"] for record in scored if record["valid_score"] == best)


def summarize(result):
    """The benchmark figures of one run_recbole_missrec result."""
    history = result["history"]
    valid_seconds = [record["valid_seconds"] for record in history if "valid_seconds" in record]
    return {
        "test": {metric: float(result["test_result"][metric]) for metric in METRICS},
        "best_valid_score": float(result["best_valid_score"]),
        "best_epoch": best_epoch(history, result["valid_score_bigger"]),
        "epochs_run": len(history),
        "train_seconds_per_epoch": mean(record["train_seconds"] for record in history) if history else None,
        "eval_seconds": mean(valid_seconds) if valid_seconds else None,
        "peak_rss_mb": result["peak_rss_mb"],
        "trainable_params": result["trainable_params"],
        "total_params": result["total_params"],
        "history": history,
    }


def pretrain(spec):
    """A RecBole model's pre-training stage (S3Rec's self-supervised one), run through the plugin's entry
    point as RecBole runs it; the plugin's trainers save it weights-only, so the fine-tuning stage's
    ``torch.load`` reads it. Returns the checkpoint's path and the stage's figures."""
    config = dict(spec["config"], train_stage="pretrain", pretrain_epochs=spec["pretrain_epochs"],
                  save_step=spec["pretrain_epochs"])
    start = perf_counter()
    result = run_recbole_missrec(spec["model"], spec["dataset"], spec["config_files"], config, saved=True)
    return result["checkpoint"], {"pretrain_epochs": spec["pretrain_epochs"], "pretrain_seconds": perf_counter() - start}


def run(spec):
    """Train and test one variant; a two-stage one (S3Rec) pre-trains first, then fine-tunes from there."""
    config = dict(spec["config"])
    extra = {}
    if "pretrain" in spec["stages"]:
        weights, extra = pretrain(spec)
        config.update(train_stage="finetune", pre_model_path=weights)
    result = run_recbole_missrec(spec["model"], spec["dataset"], spec["config_files"], config, saved=True,
                                 pretrained=spec.get("pretrained"))
    if spec.get("pretrained"):
        extra["transfer"] = result.get("transfer")
    return dict(summarize(result), **extra, torch_threads=torch.get_num_threads())


def cpu_seconds():
    """User + system CPU time of this process: unlike wall time, it does not grow when other jobs share
    the cores (with OMP_NUM_THREADS=1 it approximates the wall time on an idle machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    spec_path, result_path = sys.argv[1:3]
    with open(spec_path) as handle:
        spec = json.load(handle)
    start = perf_counter()
    record = run(spec)
    record["wall_seconds"] = perf_counter() - start
    record["cpu_seconds"] = cpu_seconds()
    atomic_write_json(result_path, record, indent=1, default=str)  # default: a load report may hold non-JSON values


if __name__ == "__main__":
    main()
