"""Name-based look-up of models, trainers and datasets: the plugin's first, RecBole's otherwise.

The model name is the key to everything about a model (its class, trainer, dataset class and yaml), so
`--model SASRec` runs RecBole's SASRec unchanged and `--model MISSRec` runs this plugin's.
"""
import importlib

from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_missrec.trainer import with_plugin_trainer


def get_model(model_name):
    module = importlib.import_module("recbole_missrec.model")
    if hasattr(module, model_name):
        return getattr(module, model_name)
    return recbole_get_model(model_name)


def get_trainer(model_type, model_name):
    module = importlib.import_module("recbole_missrec.trainer")
    if hasattr(module, model_name + "Trainer"):
        return getattr(module, model_name + "Trainer")
    return with_plugin_trainer(recbole_get_trainer(model_type, model_name))


def create_dataset(config):
    module = importlib.import_module("recbole_missrec.data")
    if hasattr(module, config["model"] + "Dataset"):
        return getattr(module, config["model"] + "Dataset")(config)
    return recbole_create_dataset(config)
