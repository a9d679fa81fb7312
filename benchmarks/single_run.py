"""One benchmark run in its own process: ``python single_run.py SPEC.json RESULT.json``.

A fresh process per run because RecBole's Config, logging and global seeds make repeated runs in one
process fragile, and because peak resident memory (``ru_maxrss``) is only per run when the process is.
The parent (run.py) sets the working directory, so RecBole's log/ and saved/ land in the work folder.
"""
import json
import os
import resource
import sys
from statistics import mean
from time import perf_counter

import torch

from recbole_missrec.atomic import atomic_write_json
from recbole_missrec.quick_start import run_recbole_missrec
from recbole_missrec.utils import get_model, is_plugin_model
from report import epoch_seconds

def best_epoch(history, bigger=True):
    """Epoch of the best validation score: the last one on ties, whose checkpoint RecBole's early stopping
    keeps (a tie counts as an improvement)."""
    scored = [record for record in history if "valid_score" in record]
    if not scored:
        return None
    best = (max if bigger else min)(record["valid_score"] for record in scored)
    return [record["epoch"] for record in scored if record["valid_score"] == best][-1]


def summarize(result):
    """The benchmark figures of one run_recbole_missrec result. ``epoch_seconds`` comes from the history, so
    unlike ``cpu_seconds`` and ``wall_seconds`` (this process only) it covers every sitting of a resumed run."""
    history = result["history"]
    valid_seconds = [record["valid_seconds"] for record in history if "valid_seconds" in record]
    return {
        "test": {metric: float(value) for metric, value in result["test_result"].items()},  # every topk asked for
        "best_valid_score": float(result["best_valid_score"]),
        "best_epoch": best_epoch(history, result["valid_score_bigger"]),
        "epochs_run": len(history),
        "train_seconds_per_epoch": mean(record["train_seconds"] for record in history) if history else None,
        "eval_seconds": mean(valid_seconds) if valid_seconds else None,
        "epoch_seconds": epoch_seconds(history),
        "peak_rss_mb": result["peak_rss_mb"],
        "trainable_params": result["trainable_params"],
        "checkpoint": result["checkpoint"],
        "total_params": result["total_params"],
        "history": history,
    }


def pretrain(spec, plugin):
    """The pre-training stage of a two-stage variant; returns the checkpoint's path and the stage's figures.

    A plugin model (MSM4SR) runs its own ``pretrain`` stage with the run's budget (MSM4SR keeps the epoch
    with the best validation score) and writes its checkpoint to a folder of its own. That stage resumes
    too, so a run killed while fine-tuning does not pre-train again when the sweep is relaunched: the
    finished stage is only tested again. RecBole's S3Rec runs its self-supervised stage for
    ``pretrain_epochs`` as RecBole runs it (RecBole's ``pretrain`` loop has no resume); the plugin's
    trainers save it weights-only, so the fine-tuning stage's ``torch.load`` reads it.
    """
    config = dict(spec["config"], train_stage="pretrain")
    if plugin:
        config["checkpoint_dir"] = os.path.join(config["checkpoint_dir"], "pretrain")
    else:
        config.update(pretrain_epochs=spec["pretrain_epochs"], save_step=spec["pretrain_epochs"])
    start = perf_counter()
    result = run_recbole_missrec(spec["model"], spec["dataset"], spec["config_files"], config, saved=True,
                                 resume=plugin)
    figures = {"pretrain_seconds": perf_counter() - start}
    if plugin:
        figures.update(pretrain_epochs=len(result["history"]),
                       pretrain_best_epoch=best_epoch(result["history"], result.get("valid_score_bigger", True)))
    else:
        figures["pretrain_epochs"] = spec["pretrain_epochs"]
    return result["checkpoint"], figures


def run(spec):
    """Train and test one variant. A two-stage one pre-trains first, then fine-tunes from that checkpoint:
    a plugin model through ``pretrained`` (its load report is kept), RecBole's S3Rec through its
    ``pre_model_path``. The last stage keeps its progress (``resume``), so a killed run continues from its
    last validated epoch when the sweep is relaunched."""
    config = dict(spec["config"])
    pretrained = spec.get("pretrained")
    extra = {}
    if "pretrain" in spec["stages"]:
        plugin = is_plugin_model(get_model(spec["model"]))
        weights, extra = pretrain(spec, plugin)
        if plugin:
            pretrained = weights
        else:
            config.update(train_stage="finetune", pre_model_path=weights)
    result = run_recbole_missrec(spec["model"], spec["dataset"], spec["config_files"], config, saved=True,
                                 pretrained=pretrained, resume=True)
    if pretrained:
        extra["transfer"] = result.get("transfer")
    return dict(summarize(result), **extra, torch_threads=torch.get_num_threads())


def cpu_seconds():
    """User + system CPU time of this process: unlike wall time, it does not grow when other jobs share
    the cores (with OMP_NUM_THREADS=1 it approximates the wall time on an idle machine). A resumed run's
    covers this process only; ``epoch_seconds`` covers every sitting."""
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
