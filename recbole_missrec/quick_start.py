"""run_recbole_missrec: RecBole's quick start, with the plugin's models, datasets, trainers and yaml.

Same signature and flow as ``recbole.quick_start.run_recbole``; it exists because RecBole's version
looks models, datasets and trainers up in RecBole only, and because the result here also carries what
benchmarks need (per-epoch history, parameter counts, peak memory). MISSRec adds its two-stage flow:
``train_stage=pretrain`` (fixed epochs, periodic checkpoints, ``resume``) and fine-tuning from a
pre-trained checkpoint (``pretrained``). Under ``torchrun`` every stage runs data-parallel.
"""
import logging
import os
import resource
import sys
from logging import getLogger

from recbole.config import Config
from recbole.data import data_preparation
from recbole.data.dataloader import TrainDataLoader
from recbole.utils import init_logger, init_seed, set_color

from recbole_missrec import distributed
from recbole_missrec.data.dataset import MISSRecPretrainDataset
from recbole_missrec.trainer import DistributedStepMixin, MISSRecPretrainTrainer, latest_checkpoint, load_state
from recbole_missrec.utils import create_dataset, get_model, get_trainer

PROPERTIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")
PRETRAIN = "pretrain"
STAGE_FILES = {"MISSRec": {PRETRAIN: "pretrain.yaml", "finetune": "finetune.yaml"}}


def _config_files(model_name, dataset_name, stage_file):
    if not os.path.isdir(PROPERTIES):
        raise FileNotFoundError(
            f"the plugin's properties folder {PROPERTIES} is missing: install the plugin from its source "
            f"tree with `pip install -e .`"
        )
    names = ["overall.yaml", f"{model_name}.yaml", stage_file, f"dataset/{dataset_name}.yaml"]
    paths = [os.path.join(PROPERTIES, name) for name in names if name]
    return [path for path in paths if os.path.isfile(path)]


def default_config_files(model_name, dataset_name, stage=None):
    """The plugin's yaml for this run, lowest priority first: the shared evaluation protocol, the model's
    defaults, its training stage (pre-training when ``stage`` is "pretrain", else fine-tuning), then the
    dataset's layout. Missing ones are skipped."""
    stages = STAGE_FILES.get(model_name, {})
    return _config_files(model_name, dataset_name, stages.get(PRETRAIN if stage == PRETRAIN else "finetune"))


def requested_stage(model_class, dataset, config_file_list, config_dict):
    """``train_stage`` as the user set it (command line, dict or their yaml), read before the plugin's stage
    file is chosen; None when unset (fine-tuning)."""
    files = _config_files(model_class.__name__, dataset, None) + list(config_file_list)
    return Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=config_dict)["train_stage"]


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
    """Transfer a pre-trained checkpoint into ``model`` by name, log what was loaded, skipped and newly
    initialised, and freeze the backbone if asked. Returns the load report."""
    checkpoint = load_state(path, next(model.parameters()).device)
    report = model.load_pretrained(checkpoint.get("state_dict", checkpoint))
    logger.info(set_color("Pre-trained weights", "blue") + f" from {path}")
    logger.info(f"  loaded: {_summarise(report['loaded'])}")
    logger.info(f"  skipped, domain-specific (re-discovered or re-learned here): {_summarise(report['domain_specific'])}")
    logger.info(f"  skipped, not in this model: {_summarise(report['unused'])}")
    logger.info(f"  newly initialised: {_summarise(report['new'])}")
    if freeze:
        model.freeze_backbone()
        logger.info("  frozen: position table and encoder-decoder (freeze_backbone=True)")
    return report


def _build_model(model_class, config, dataset, logger):
    init_seed(config["seed"], config["reproducibility"])
    net = model_class(config, dataset).to(config["device"])
    distributed.seed_rank(config["seed"])
    logger.info(net)
    return net


def _log_parameters(net, logger):
    trainable, total = count_parameters(net)
    logger.info(set_color("Parameters", "blue") + f": {trainable} trainable of {total}")
    return trainable, total


def pretrain(model_class, config, logger, resume=None, saved=True):
    """Pre-train on the train split of ``config["dataset"]`` (a merged multi-domain set or any dataset).

    ``resume``: a checkpoint path, or True for the latest one of this run's name (a fresh start if there is
    none yet, so the same command can simply be relaunched after a crash).
    """
    dataset = MISSRecPretrainDataset(config)
    logger.info(dataset)
    train_data = TrainDataLoader(config, dataset.build()[0], None, shuffle=True)
    net = _build_model(model_class, config, train_data._dataset, logger)
    trainable, total = _log_parameters(net, logger)
    trainer = MISSRecPretrainTrainer(config, net)
    if resume:
        path = latest_checkpoint(trainer.checkpoint_prefix) if resume is True else resume
        if path:
            trainer.resume_checkpoint(path)
        else:
            logger.warning(f"no checkpoint {trainer.checkpoint_prefix}-<epoch>.pth to resume yet: starting afresh")
    history = trainer.fit(train_data, saved=saved, show_progress=config["show_progress"])
    distributed.barrier()
    return {
        "history": history,
        "trainable_params": trainable,
        "total_params": total,
        "peak_rss_mb": peak_memory_mb(),
        "checkpoint": trainer.saved_model_file,
        "world_size": distributed.world_size(),
    }


def finetune(model_class, config, logger, pretrained=None, saved=True):
    """Train with validation and early stopping, then evaluate the best checkpoint on the test split."""
    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    net = _build_model(model_class, config, train_data._dataset, logger)
    report = load_pretrained(net, pretrained, config["freeze_backbone"], logger) if pretrained else None
    trainable, total = _log_parameters(net, logger)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    if distributed.world_size() > 1 and not isinstance(trainer, DistributedStepMixin):
        raise ValueError(f"data-parallel training is implemented for MISSRec's trainers, not {type(trainer).__name__}")
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    distributed.barrier()
    test_result = None
    if distributed.is_main():
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "history": trainer.history,
        "trainable_params": trainable,
        "total_params": total,
        "peak_rss_mb": peak_memory_mb(),
        "checkpoint": trainer.saved_model_file if saved else None,
        "transfer": report,
        "world_size": distributed.world_size(),
    }


def run_recbole_missrec(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
                        pretrained=None, resume=None):
    """Train ``model`` on ``dataset``: pre-training when ``train_stage`` is "pretrain", otherwise fine-tuning
    (from the checkpoint ``pretrained`` if given) and evaluation of the best checkpoint on the test split.

    Fine-tuning returns RecBole's result dict plus ``history`` (one record per epoch), ``trainable_params``,
    ``total_params``, ``peak_rss_mb``, ``checkpoint`` and ``transfer`` (the load report); pre-training
    returns the history (loss terms and sequences/s per epoch), parameter counts and the last checkpoint.
    """
    model_class = get_model(model)
    user_files = list(config_file_list or [])
    stage = requested_stage(model_class, dataset, user_files, config_dict)
    files = default_config_files(model_class.__name__, dataset, stage) + user_files
    config = Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=config_dict)
    distributed.init(config)
    init_seed(config["seed"], config["reproducibility"])
    logger = _init_logging(config)
    logger.info(sys.argv)
    logger.info(config)
    if config["train_stage"] == PRETRAIN:
        if pretrained:
            raise ValueError("`pretrained` is for fine-tuning; continue a pre-training run with `resume`")
        return pretrain(model_class, config, logger, resume=resume, saved=saved)
    if resume:
        raise ValueError("`resume` continues a pre-training run (train_stage=pretrain)")
    return finetune(model_class, config, logger, pretrained=pretrained, saved=saved)
