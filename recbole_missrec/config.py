"""The plugin's Config: RecBole's, with the plugin's yaml files and models, built in one pass.

RecBole's ``Config`` only knows RecBole's models and its own ``properties/`` folder. Like RecBole-GNN, this
subclass adds the plugin's files to RecBole's internal defaults, lowest priority first:

    RecBole's defaults (and those of the RecBole model a plugin class extends) -> overall.yaml
    -> model/<Model>.yaml -> model/<Model>.<stage>.yaml
    -> dataset/<dataset>.yaml -> the user's yaml files -> config_dict -> command line

The stage file (``pretrain`` or ``finetune``) follows the ``train_stage`` the user asked for, or the
model's default; RecBole reads the user's settings before its internal files, so one pass suffices.
The files ship inside the package (``recbole_missrec/properties`` in a wheel); in a source checkout they
are read from the top-level ``properties/`` folder, their one source.
"""
import os

import recbole
import yaml
from recbole.config import Config

from recbole_missrec.paths import properties_dir
from recbole_missrec.utils import get_model, is_plugin_model, stage_kind

def plugin_config_files(model_name, dataset, train_stage=None, model_class=None):
    """The plugin's yaml files for a run, lowest priority first; missing ones are skipped.

    ``train_stage`` picks the stage file of a plugin model; it is ignored for RecBole's models.
    """
    folder = properties_dir()
    names = ["overall.yaml", f"model/{model_name}.yaml"]
    kind = stage_kind(model_class, train_stage) if model_class is not None else None
    if kind:
        names.append(f"model/{model_name}.{kind}.yaml")
    names.append(f"dataset/{dataset}.yaml")
    paths = [os.path.join(folder, name) for name in names]
    return [path for path in paths if os.path.isfile(path)]


def recbole_base_config_files(model_class):
    """RecBole's yaml files of the RecBole models a plugin class extends, the most general first: RecBole
    looks up a model's defaults by the class's own name only, so a subclass of its SASRec would otherwise
    start without SASRec's (``n_layers``, ``loss_type``, ...)."""
    folder = os.path.join(os.path.dirname(recbole.__file__), "properties", "model")
    paths = [os.path.join(folder, f"{base.__name__}.yaml") for base in reversed(model_class.__mro__[1:])
             if base.__module__.startswith("recbole.model.")]
    return [path for path in paths if os.path.isfile(path)]


class PluginConfig(Config):
    """RecBole's Config that also finds the plugin's models and yaml files (see the module docstring).

    ``command_line=False`` leaves ``sys.argv`` out: a config rebuilt from a checkpoint must not take the
    arguments of whatever process loads it (``python -m recbole_missrec export ...``, a user's script).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, command_line=True):
        self._command_line = command_line
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_cmd_line(self):
        return super()._load_cmd_line() if self._command_line else {}

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("model must be given: as an argument, in a config file, a config dict or --model=")
        if isinstance(model, str):
            model_class = get_model(model)
            model = model_class.__name__ if is_plugin_model(model_class) else model  # an alias runs as its model
        else:
            model_class, model = model, model.__name__
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise KeyError("dataset must be given: as an argument, in a config file, a config dict or --dataset=")
        return model, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in recbole_base_config_files(model_class):
            self._update_internal_config_dict(path)
        stage = self.external_config_dict.get("train_stage") or self._model_default(model, "train_stage")
        for path in plugin_config_files(model, dataset, stage, model_class):
            loaded = self._update_internal_config_dict(path)
            if os.path.basename(os.path.dirname(path)) == "dataset" and loaded:
                self.parameters["Dataset"] += [key for key in loaded if key not in self.parameters["Dataset"]]

    def _model_default(self, model, key):
        path = os.path.join(properties_dir(), "model", f"{model}.yaml")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return (yaml.load(handle.read(), Loader=self.yaml_loader) or {}).get(key)
