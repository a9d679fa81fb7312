"""run_recbole_missrec, objective_function and load_data_and_model: RecBole's quick start for the plugin.

Same signatures and flow as ``recbole.quick_start``; they exist because RecBole's versions look models,
datasets and trainers up in RecBole only (and reload pickled checkpoints), and because the result here also
carries what benchmarks need (per-epoch history, parameter counts, peak memory). A plugin model's stage is
chosen by ``train_stage``: a pre-training stage with ``pretrain_select: fixed_epochs`` trains on the train
split for a fixed number of epochs, every other stage trains with validation and early stopping and is
tested; ``resume`` continues either kind after a crash. RecBole's models (S3Rec's pre-training included)
take RecBole's own flow. Under ``torchrun`` every stage of a plugin model runs data-parallel.
"""
import logging
import os
import resource
import sys
from logging import getLogger

from recbole.data.dataloader import TrainDataLoader
from recbole.utils import init_logger, init_seed, set_color

from recbole_missrec import distributed
from recbole_missrec.config import PluginConfig
from recbole_missrec.data import ml100k
from recbole_missrec.data.dataloader import data_preparation, length_aware
from recbole_missrec.data.layout import check_interaction_files
from recbole_missrec.trainer import CheckpointError, HookedStepMixin, latest_checkpoint, load_state
from recbole_missrec.utils import create_dataset, get_trainer, is_plugin_model, stage_kind


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def peak_memory_mb():
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _init_logging(config):
    """RecBole's logger on rank 0; other ranks stay silent and write no log file."""
    if distributed.is_main():
        init_logger(config)
    else:
        getLogger().setLevel(logging.ERROR)
    return getLogger()


def _summarise(names):
    """'transformer.encoder (14), adapters.text (2)': weight names grouped by module, for the load report."""
    groups = {}
    for name in names:
        parts = name.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 else parts[0]
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{key} ({count})" for key, count in groups.items()) or "-"


def load_pretrained(model, path, freeze, logger):
    """Transfer a pre-trained checkpoint into ``model`` by name (the family's ``load_pretrained``), log what
    was loaded, skipped and newly initialised, and freeze the backbone if asked. Returns the load report."""
    checkpoint = load_state(path, next(model.parameters()).device)
    report = model.load_pretrained(checkpoint.get("state_dict", checkpoint))
    logger.info(set_color("Pre-trained weights", "blue") + f" from {path}")
    logger.info(f"  loaded: {_summarise(report['loaded'])}")
    logger.info(f"  skipped, domain-specific (re-discovered or re-learned here): {_summarise(report['domain_specific'])}")
    logger.info(f"  skipped, not in this model: {_summarise(report['unused'])}")
    logger.info(f"  newly initialised: {_summarise(report['new'])}")
    if freeze:
        model.freeze_backbone()
        logger.info("  frozen: the backbone (freeze_backbone=True)")
    return report


def build_model(model_class, config, dataset, logger):
    """The model, seeded as RecBole seeds it, on the run's device."""
    init_seed(config["seed"], config["reproducibility"])
    net = model_class(config, dataset).to(config["device"])
    distributed.seed_rank(config["seed"])
    logger.info(net)
    trainable, total = count_parameters(net)
    logger.info(set_color("Parameters", "blue") + f": {trainable} trainable of {total}")
    return net, trainable, total


def _run_summary(trainer, trainable, total):
    return {
        "history": trainer.history,
        "trainable_params": trainable,
        "total_params": total,
        "peak_rss_mb": peak_memory_mb(),
        "world_size": distributed.world_size(),
    }


def pretrain_fixed_epochs(model_class, config, logger, resume=None, saved=True):
    """Pre-train for a fixed number of epochs on the train split of ``config["dataset"]`` (a merged
    multi-domain set or any dataset).

    ``resume``: a checkpoint path, or True for the latest one of this run's name (a fresh start if there is
    none yet, so the same command can simply be relaunched after a crash).
    """
    dataset = create_dataset(config, model_class)
    logger.info(dataset)
    if dataset.pt_domains():
        logger.info(f"pre-training domains: {dataset.pt_domains()}")
    train_data = length_aware(TrainDataLoader(config, dataset.build()[0], None, shuffle=True), config)
    require_training_rows(train_data, config)
    net, trainable, total = build_model(model_class, config, train_data._dataset, logger)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"], config["train_stage"])(config, net)
    if resume:
        path = latest_checkpoint(trainer.checkpoint_prefix) if resume is True else resume
        if path:
            trainer.resume_checkpoint(path)
        else:
            logger.warning(f"no checkpoint {trainer.checkpoint_prefix}-<epoch>.pth to resume yet: starting afresh")
    trainer.fit(train_data, saved=saved, show_progress=config["show_progress"])
    distributed.barrier()
    return dict(_run_summary(trainer, trainable, total), checkpoint=trainer.saved_model_file)


def progress_file(config):
    """Where a resumable run with validation keeps its progress: one file per model, dataset, stage and
    seed in ``checkpoint_dir``."""
    stage = config["train_stage"] or "train"
    name = f"{config['model']}-{config['dataset']}-{stage}-seed{config['seed']}-progress.pth"
    return os.path.join(config["checkpoint_dir"], name)


def train_and_evaluate(model_class, config, logger, pretrained=None, saved=True, resume=None):
    """RecBole's flow: train with validation and early stopping, then evaluate the best checkpoint on the
    test split. ``pretrained`` (plugin models): a checkpoint to transfer from first.

    ``resume``: True keeps the run's progress in :func:`progress_file` after every validation and, when
    that file exists, continues from it (so the same command can be relaunched after a crash); a path
    does the same with that file.
    """
    data = create_dataset(config, model_class)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    require_training_rows(train_data, config)
    net, trainable, total = build_model(model_class, config, train_data._dataset, logger)
    report = load_pretrained(net, pretrained, config["freeze_backbone"], logger) if pretrained else None
    if report is not None:
        trainable, total = count_parameters(net)
        logger.info(set_color("Parameters after transfer", "blue") + f": {trainable} trainable of {total}")
    trainer = get_trainer(config["MODEL_TYPE"], config["model"], config["train_stage"])(config, net)
    if distributed.world_size() > 1 and not isinstance(trainer, HookedStepMixin):
        raise ValueError(f"data-parallel training is implemented for the plugin's trainers, not {type(trainer).__name__}")
    if resume:
        if not saved:
            raise ValueError("`resume` needs saved=True: a resumed run tests the best checkpoint it saved")
        trainer.progress_file = progress_file(config) if resume is True else str(resume)
        if os.path.isfile(trainer.progress_file):
            trainer.resume_progress(trainer.progress_file)
        elif resume is not True:
            raise FileNotFoundError(f"progress file not found: {resume} (pass --resume without a path to start "
                                    f"a resumable run)")
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    distributed.barrier()
    test_result = None
    if distributed.is_main():
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return dict(
        _run_summary(trainer, trainable, total),
        model=config["model"],
        best_valid_score=best_valid_score,
        valid_score_bigger=config["valid_metric_bigger"],
        best_valid_result=best_valid_result,
        test_result=test_result,
        checkpoint=trainer.saved_model_file if saved else None,
        transfer=report,
    )


def _fixed_epoch_stage(model_class, config):
    if stage_kind(model_class, config["train_stage"]) != "pretrain":
        return False
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"], config["train_stage"])
    return not trainer_class.validates(config)


def prepare_run(model=None, dataset=None, config_file_list=None, config_dict=None):
    """Config, process group, seeds, logger and prepared data (the embedded default's features) of a run."""
    config = PluginConfig(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    distributed.init(config)
    init_seed(config["seed"], config["reproducibility"])
    logger = _init_logging(config)
    logger.info(sys.argv)
    logger.info(config)
    prepare_data(config, logger)
    return config, logger


def prepare_data(config, logger):
    """Steps before RecBole reads the data: the interaction files checked (the benchmark layout detected),
    and the embedded default's text features built for the plugin's models."""
    check_interaction_files(config, logger)
    if is_plugin_model(config.model_class):
        ml100k.prepare(config)


def require_training_rows(train_data, config):
    if len(train_data.dataset) == 0:
        raise ValueError(f"the training split of {config['dataset']} ({config['data_path']}) is empty after RecBole's "
                         f"filtering and splitting: check the interaction files and filters (user_inter_num_interval, "
                         f"item_inter_num_interval, eval_args)")


def run_recbole_missrec(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
                        pretrained=None, resume=None):
    """Train ``model`` (a name, or a model class) on ``dataset``.

    A plugin model's fixed-epoch pre-training returns the history (loss terms and sequences/s per epoch),
    parameter counts and the last checkpoint. Every other run trains with validation, tests the best
    checkpoint and returns RecBole's result dict plus ``history`` (one record per epoch),
    ``trainable_params``, ``total_params``, ``peak_rss_mb``, ``checkpoint`` and ``transfer`` (the load
    report of ``pretrained``).
    """
    config, logger = prepare_run(model, dataset, config_file_list, config_dict)
    model_class = config.model_class
    if pretrained and not is_plugin_model(model_class):
        raise ValueError(f"`pretrained` transfers into the plugin's models; {config['model']} is RecBole's "
                         f"(S3Rec: pass pre_model_path with train_stage=finetune)")
    if is_plugin_model(model_class) and _fixed_epoch_stage(model_class, config):
        if pretrained:
            raise ValueError("`pretrained` is for fine-tuning; continue a pre-training run with `resume`")
        return pretrain_fixed_epochs(model_class, config, logger, resume=resume, saved=saved)
    return train_and_evaluate(model_class, config, logger, pretrained=pretrained, saved=saved, resume=resume)


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole's ``objective_function`` for ``recbole.trainer.HyperTuning``, for plugin and RecBole models:
    model and dataset come from the files, the dict or the command line, as in RecBole."""
    result = run_recbole_missrec(config_file_list=config_file_list, config_dict=config_dict, saved=saved)
    keys = ("model", "best_valid_score", "valid_score_bigger", "best_valid_result", "test_result")
    return {key: result[key] for key in keys}


def checkpoint_config(checkpoint, model_file, data_path=None, config_dict=None):
    """The Config of the run that wrote ``checkpoint`` (its plain stored values), with the data now under
    ``data_path`` and ``config_dict`` overriding any stored setting."""
    if "config" not in checkpoint:
        raise CheckpointError(f"{model_file} records no config (written by an older version of the plugin): "
                              f"retrain, or rebuild the run with run_recbole_missrec and load its state_dict")
    stored = dict(checkpoint["config"], **(config_dict or {}))
    # The stored data_path is RecBole's resolved <data_path>/<dataset>; Config joins the dataset name again.
    stored["data_path"] = data_path if data_path is not None else os.path.dirname(stored["data_path"])
    return PluginConfig(model=stored.pop("model"), dataset=stored.pop("dataset"), config_dict=stored,
                        command_line=False)


def load_data_and_model(model_file, data_path=None, config_dict=None):
    """RecBole's ``load_data_and_model`` for the plugin's weights-only checkpoints: rebuilds the run's
    config (stored in the checkpoint as plain values), dataset and data loaders, and the trained model.

    ``data_path`` says where the data lives now; ``config_dict`` overrides any other stored setting (e.g.
    ``{"use_gpu": False}``). Returns (config, model, dataset, train_data, valid_data, test_data), as RecBole
    does, so ``recbole.utils.case_study.full_sort_topk`` works on it.
    """
    checkpoint = load_state(model_file)
    config = checkpoint_config(checkpoint, model_file, data_path, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    prepare_data(config, logger)
    dataset = create_dataset(config, config.model_class)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = config.model_class(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    logger.info(f"loaded {config['model']} from {model_file}")
    return config, model.eval(), dataset, train_data, valid_data, test_data
