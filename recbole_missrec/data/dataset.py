"""MultiModalDataset: RecBole's SequentialDataset plus one feature store per item modality.

RecBole re-maps item tokens to internal ids (0 = padding) but knows nothing of item feature files, so
this class reads them and aligns them to those ids (``feature_store.py``). Every plugin model family
reads its features from ``item_features``; RecBole's splitting, sampling and evaluation stay RecBole's.
"""
import os

from recbole.data.dataset import SequentialDataset

from recbole_missrec.data.feature_store import read_store

MODALITY_ALIASES = {
    "text": ("text",),
    "img": ("img",),
    "text_img": ("text", "img"),
    "img_text": ("text", "img"),
}
AUGMENTED_TEXT = "text_aug"  # features of word-dropped item texts, read by pre-training views


def parse_modalities(modal_type):
    """`modal_type` (text | img | text_img; img_text accepted as the reference's name) -> modality names."""
    try:
        return MODALITY_ALIASES[modal_type]
    except KeyError:
        raise ValueError(f"unknown modal_type {modal_type!r}; use one of {sorted(MODALITY_ALIASES)}") from None


def feature_suffixes(config):
    """{store name: (file suffix, dimension)} of a run: the modalities of ``modal_type`` plus, when
    ``plm_suffix_aug`` is set (pre-training), the word-dropped text."""
    text_suffix = config["text_suffix"] or config["plm_suffix"]
    known = {"text": (text_suffix, config["plm_size"]), "img": (config["img_suffix"], config["img_size"])}
    suffixes = {modality: known[modality] for modality in parse_modalities(config["modal_type"])}
    if config["plm_suffix_aug"]:
        suffixes[AUGMENTED_TEXT] = (config["plm_suffix_aug"], config["plm_size"])
    return suffixes


class MultiModalDataset(SequentialDataset):
    """Adds ``item_features``: {store name: FeatureStore} (``text``, ``img``, and ``text_aug`` in
    pre-training), each aligned to the internal item ids, ``feature_files``: {store name: path}, and
    ``feature_divisors``: {store name: the divisor of ``feature_norm: mean``, else None}, which a serving
    bundle keeps so that items added later are scaled alike."""

    def __init__(self, config):
        super().__init__(config)
        self.feature_files = {}
        self.feature_divisors = {}
        self.item_features = self._load_item_features()

    def feature_path(self, suffix):
        folder = self.config["feature_path"] or self.config["data_path"]
        return os.path.join(folder, f"{self.dataset_name}.{suffix}")

    def _load_item_features(self):
        tokens = self.field2id_token[self.iid_field][1:]
        stores = {}
        for name, (suffix, dim) in feature_suffixes(self.config).items():
            path = self.feature_path(suffix)
            raw = read_store(path, dim, tokens, self.config["max_feature_slots"])
            norm = self.config["feature_norm"]
            self.feature_divisors[name] = raw.mean_norm() if norm == "mean" else None
            stores[name] = raw.normalised(norm, self.feature_divisors[name], float(self.config["feature_scale"]))
            self.feature_files[name] = path
            store = stores[name]
            self.logger.info(
                f"{name} features: {path} ({store.slots} x {store.dim}-d per item), "
                f"{int((~store.present[1:]).sum())} of {self.item_num - 1} items without this modality"
            )
        return stores

    def pt_domains(self):
        """The domain names of a merged pre-training set (``<name>.pt_datasets``), or None."""
        path = os.path.join(self.config["data_path"], f"{self.dataset_name}.pt_datasets")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
