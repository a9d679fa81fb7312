"""run_recbole_missrec: RecBole's quick start, with the plugin's models, datasets, trainers and yaml.

Same signature and flow as ``recbole.quick_start.run_recbole``; it exists because RecBole's version
looks models, datasets and trainers up in RecBole only, and because the result here also carries what
benchmarks need (per-epoch history, parameter counts, peak memory).
"""
import os
import resource
import sys
from logging import getLogger

from recbole.config import Config
from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_missrec.utils import create_dataset, get_model, get_trainer

PROPERTIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")
STAGE_FILES = {"MISSRec": "finetune.yaml"}


def default_config_files(model_name, dataset_name):
    """The plugin's yaml for this run, lowest priority first: the shared evaluation protocol, the model's
    defaults, its training stage, then the dataset's layout. Missing ones are skipped."""
    if not os.path.isdir(PROPERTIES):
        raise FileNotFoundError(
            f"the plugin's properties folder {PROPERTIES} is missing: install the plugin from its source "
            f"tree with `pip install -e .`"
        )
    names = ["overall.yaml", f"{model_name}.yaml", STAGE_FILES.get(model_name), f"dataset/{dataset_name}.yaml"]
    paths = [os.path.join(PROPERTIES, name) for name in names if name]
    return [path for path in paths if os.path.isfile(path)]


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def peak_memory_mb():
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_recbole_missrec(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """Train ``model`` on ``dataset`` and evaluate the best checkpoint on the test split.

    Returns RecBole's result dict plus ``history`` (one record per epoch), ``trainable_params``,
    ``total_params``, ``peak_rss_mb`` and ``checkpoint``.
    """
    model_class = get_model(model)
    files = default_config_files(model_class.__name__, dataset) + list(config_file_list or [])
    config = Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = model_class(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainable, total = count_parameters(net)
    logger.info(set_color("Parameters", "blue") + f": {trainable} trainable of {total}")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
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
    }
