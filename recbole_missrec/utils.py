"""Name-based look-up of models, stages, trainers and datasets: the plugin's first, RecBole's otherwise.

The model name is the key to everything about a model. A plugin model family is one package under
``recbole_missrec/model/`` that exports its model class; the class declares its training stages
(``STAGES``: ``train_stage`` value -> ``"pretrain"`` or ``"finetune"``). A stage's trainer and dataset
are found by name in the family's package (``<Model>PretrainTrainer``, ``<Model>Trainer``,
``<Model>Dataset``) and default to the generic core's. RecBole's models (and a user's own model class
without ``STAGES``) run with RecBole's own trainer and dataset classes.
"""
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import os
import warnings

from recbole.data import create_dataset as recbole_create_dataset
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

PLUGIN_MODELS = "recbole_missrec.model"
# RecBole's model packages that import without optional dependencies (exlib_recommender needs lightgbm/xgboost).
RECBOLE_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                    "knowledge_aware_recommender")


def plugin_models():
    """{name: class} of every model the plugin ships."""
    module = importlib.import_module(PLUGIN_MODELS)
    return {name: getattr(module, name) for name in module.__all__}


def recbole_model_names():
    """Names of RecBole's models, for error messages (one module per model, class named like it)."""
    names = []
    for package in RECBOLE_PACKAGES:
        module = importlib.import_module(f"recbole.model.{package}")
        names += [name for name, value in vars(module).items()
                  if inspect.isclass(value) and issubclass(value, AbstractRecommender)]
    return sorted(set(names))


def _recbole_has(model_name):
    """Whether RecBole has a module for this model, looked up on disk: importing RecBole's exlib package
    to find out needs lightgbm and xgboost."""
    import recbole.model

    root = recbole.model.__path__[0]
    packages = RECBOLE_PACKAGES + ("exlib_recommender",)
    return any(os.path.isfile(os.path.join(root, package, f"{model_name.lower()}.py")) for package in packages)


def get_model(model_name):
    """The model class named ``model_name``: the plugin's, else RecBole's. An unknown name lists both."""
    found = plugin_models().get(model_name)
    if found is not None:
        return found
    if _recbole_has(model_name):
        return recbole_get_model(model_name)
    plugin = sorted(plugin_models())
    recbole = recbole_model_names()
    close = difflib.get_close_matches(model_name, plugin + recbole, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {model_name!r}.{hint}\n  plugin models: {', '.join(plugin)}\n"
        f"  RecBole models: {', '.join(recbole)}"
    )


def is_plugin_model(model_class):
    """A model that follows the plugin's protocol (declares its stages): it gets the multi-modal dataset and
    the plugin's trainers; anything else runs RecBole's flow."""
    return isinstance(getattr(model_class, "STAGES", None), dict)


def stage_kind(model_class, train_stage):
    """``"pretrain"`` or ``"finetune"`` for a plugin model's ``train_stage``; None for other models."""
    if not is_plugin_model(model_class):
        return None
    stages = model_class.STAGES
    if train_stage not in stages:
        raise ValueError(f"train_stage={train_stage!r} is not a stage of {model_class.__name__}; use one of {list(stages)}")
    return stages[train_stage]


def _family(model_class):
    """The package of a model's family (``recbole_missrec.model.missrec`` for MISSRec)."""
    return importlib.import_module(model_class.__module__.rpartition(".")[0])


def _by_name(model_class, suffix, kind):
    family = _family(model_class)
    names = [f"{model_class.__name__}{kind.capitalize()}{suffix}"] if kind == "pretrain" else []
    names.append(f"{model_class.__name__}{suffix}")
    return next((getattr(family, name) for name in names if hasattr(family, name)), None)


def get_trainer(model_type, model_name, train_stage=None):
    """The trainer class of a model's stage. Plugin models: the family's own trainer if it has one, else the
    core's (``PretrainTrainer`` for a pre-training stage, ``PluginTrainer`` otherwise). RecBole's models:
    RecBole's trainer with the plugin's weights-only checkpoints and epoch history (also for the plugin's
    classes that extend one of RecBole's models without the plugin's protocol)."""
    from recbole_missrec.trainer import PluginTrainer, PretrainTrainer, with_plugin_trainer

    model_class = plugin_models().get(model_name)
    if model_class is None or not is_plugin_model(model_class):
        return with_plugin_trainer(recbole_get_trainer(model_type, model_name))
    kind = stage_kind(model_class, train_stage) if train_stage else "finetune"
    own = _by_name(model_class, "Trainer", kind)
    if own is not None:
        return own
    return PretrainTrainer if kind == "pretrain" else PluginTrainer


@contextlib.contextmanager
def recbole_deprecations_silenced():
    """RecBole 1.2.1 calls APIs that pandas 2 and torch 2.4+ deprecate (chained ``fillna(inplace=True)``,
    ``torch.cuda.amp.GradScaler``); the warnings are about RecBole's code, not the user's, so they are
    silenced where RecBole runs them (dataset loading, trainer construction) and nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
        yield


def create_dataset(config, model_class=None):
    """The dataset of a run: a plugin model's family dataset or the core's multi-modal one; RecBole's
    dataset for its own models."""
    from recbole_missrec.data.dataset import MultiModalDataset

    model_class = model_class or plugin_models().get(config["model"])
    with recbole_deprecations_silenced():
        if model_class is None or not is_plugin_model(model_class):
            return recbole_create_dataset(config)
        own = _by_name(model_class, "Dataset", stage_kind(model_class, config["train_stage"]))
        return (own or MultiModalDataset)(config)
