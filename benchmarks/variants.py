"""The benchmarked model variants and the config every run of them gets.

Rule for all: hidden width 300 and the same training budget (epochs cap, early-stopping patience),
evaluation protocol from ``properties/overall.yaml``; everything else is each model's own default
(RecBole's ``properties/model/<Model>.yaml``, the plugin's ``properties/model/<Model>.yaml``).
"""
import csv
import os

from attributes import CATEGORY_FIELD

HIDDEN_SIZE = 300


class Variant:
    """A benchmark row: a model name plus the settings that make it this variant."""

    def __init__(self, name, model, settings=None, needs_attributes=False, pretrained=False, stages=("train",)):
        self.name = name
        self.model = model
        self.settings = dict(settings or {})
        self.needs_attributes = needs_attributes
        self.pretrained = pretrained
        self.stages = stages


VARIANTS = {
    variant.name: variant
    for variant in [
        Variant("MISSRec-inductive", "MISSRec", {"train_stage": "inductive_ft"}),
        Variant("MISSRec-transductive", "MISSRec", {"train_stage": "transductive_ft"}),
        Variant("MISSRec-inductive+pretrained", "MISSRec", {"train_stage": "inductive_ft"}, pretrained=True),
        Variant("MISSRec-transductive+pretrained", "MISSRec", {"train_stage": "transductive_ft"}, pretrained=True),
        # MSM4SR (alias MP4SR): from scratch, with item IDs (the reference's fine-tuning) or from features only;
        # and the reference's in-domain schedule: pre-train on the same training split (kept by validation),
        # then fine-tune from that checkpoint.
        Variant("MSM4SR", "MSM4SR", {"train_stage": "finetune"}),
        Variant("MSM4SR-inductive", "MSM4SR", {"train_stage": "inductive_ft"}),
        Variant("MSM4SR+in-domain-pretrain", "MSM4SR", {"train_stage": "finetune"}, stages=("pretrain", "finetune")),
        # UniSRec, the same-protocol peer: from scratch, text only or text + IDs; and parameter-efficient
        # fine-tuning of a (multi-domain) pre-training checkpoint (--pretrained UniSRec=PATH).
        Variant("UniSRec-inductive", "UniSRec", {"train_stage": "inductive_ft"}),
        Variant("UniSRec-transductive", "UniSRec", {"train_stage": "transductive_ft"}),
        Variant("UniSRec-inductive+pretrained", "UniSRec", {"train_stage": "inductive_ft"}, pretrained=True),
        Variant("UniSRec-transductive+pretrained", "UniSRec", {"train_stage": "transductive_ft"}, pretrained=True),
        Variant("SASRec", "SASRec"),
        # RecBole's SASRec on the plugin's length-aware loader (batches cut to their longest history, from
        # length buckets); plain "SASRec" keeps RecBole's padded loader.
        Variant("SASRec-length-aware", "SASRec", {"trim_batches": True, "length_buckets": 16}),
        # the same with the plugin's learned offset for a row's own history items (the ID baseline for history_bias)
        Variant("HistorySASRec-length-aware", "HistorySASRec", {"trim_batches": True, "length_buckets": 16}),
        Variant("GRU4Rec", "GRU4Rec", {"embedding_size": HIDDEN_SIZE}),
        Variant("BERT4Rec", "BERT4Rec"),
        Variant("FDSA", "FDSA", {"selected_features": [CATEGORY_FIELD]}, needs_attributes=True),
        # RecBole's S3Rec: self-supervised pre-training on the same training split, then fine-tuning.
        Variant("S3Rec", "S3Rec", {"item_attribute": CATEGORY_FIELD}, needs_attributes=True,
                stages=("pretrain", "finetune")),
    ]
}
DEFAULT_VARIANTS = ["MISSRec-inductive", "MISSRec-transductive", "SASRec", "GRU4Rec", "BERT4Rec", "FDSA", "S3Rec"]


def parse_checkpoints(values):
    """``--pretrained`` values -> {model name: checkpoint path}: ``MODEL=PATH`` is one family's checkpoint, a
    bare ``PATH`` (key None) serves every family that has no checkpoint of its own."""
    models = {variant.model for variant in VARIANTS.values() if variant.pretrained}
    checkpoints = {}
    for value in values or []:
        model, sep, path = value.partition("=")
        if not (sep and model in models):
            model, path = None, value
        if model in checkpoints:
            raise SystemExit(f"--pretrained gives {'every family' if model is None else model} two checkpoints")
        checkpoints[model] = os.path.abspath(path)
    return checkpoints


def checkpoint_of(variant, checkpoints):
    """The checkpoint a ``+pretrained`` variant fine-tunes from: its model's own, else the shared one, else None."""
    return checkpoints.get(variant.model, checkpoints.get(None)) if variant.pretrained else None


def expand_variants(names, checkpoints):
    """Variant names to run: the requested ones, plus the ``+pretrained`` twin of every variant whose model has
    a checkpoint (``parse_checkpoints``)."""
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown model variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    orphans = [name for name in names if VARIANTS[name].pretrained and not checkpoint_of(VARIANTS[name], checkpoints)]
    if orphans:
        raise SystemExit(f"{orphans} need a pre-trained checkpoint: --pretrained {VARIANTS[orphans[0]].model}=PATH")
    twins = [f"{name}+pretrained" for name in names if f"{name}+pretrained" in VARIANTS]
    return list(dict.fromkeys(list(names) + [twin for twin in twins if checkpoint_of(VARIANTS[twin], checkpoints)]))


def interaction_columns(data_path, dataset):
    """Field names of the dataset's interaction files (benchmark ``.train.inter`` or atomic ``.inter``)."""
    folder = os.path.join(data_path, dataset)
    for suffix in ("train.inter", "inter"):
        path = os.path.join(folder, f"{dataset}.{suffix}")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                header = next(csv.reader(handle, delimiter="\t"))
            return [field.split(":")[0] for field in header]
    raise FileNotFoundError(f"no {dataset}.train.inter or {dataset}.inter in {folder}")


def run_config(variant, dataset, data_path, seed, budget, checkpoint_dir, overrides=None):
    """config_dict for run_recbole_missrec: shared budget rules, then the variant's settings, then the
    user's ``--set`` overrides (highest priority)."""
    config = {
        "data_path": data_path,
        "checkpoint_dir": checkpoint_dir,
        "seed": seed,
        "hidden_size": HIDDEN_SIZE,
        "epochs": budget["epochs"],
        "stopping_step": budget["stopping_step"],
        "show_progress": False,
        "state": "INFO",
    }
    config.update(variant.settings)
    if variant.needs_attributes:
        config["load_col"] = {"inter": interaction_columns(data_path, dataset), "item": ["item_id", CATEGORY_FIELD]}
    config.update(overrides or {})
    return config
