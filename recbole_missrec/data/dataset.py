"""MISSRecDataset: RecBole's SequentialDataset plus frozen per-modality item feature tables.

RecBole re-maps item tokens to internal ids (0 = padding) but knows nothing of feature files laid out by
item token, so this class aligns them: table row i = file row ``int(token_i)``, row 0 = zeros.
"""
import os

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset

from recbole_missrec.data.feature_file import FeatureFileError, read_feature_file
from recbole_missrec.data.ml100k import ensure_text_features

MODALITY_ALIASES = {
    "text": ("text",),
    "img": ("img",),
    "text_img": ("text", "img"),
    "img_text": ("text", "img"),
}


def parse_modalities(modal_type):
    """`modal_type` (text | img | text_img; img_text accepted as the reference's name) -> modality names."""
    try:
        return MODALITY_ALIASES[modal_type]
    except KeyError:
        raise ValueError(f"unknown modal_type {modal_type!r}; use one of {sorted(MODALITY_ALIASES)}") from None


class MISSRecDataset(SequentialDataset):
    """Adds ``modal_features`` ({modality: FloatTensor [n_items, dim]}) and ``modal_missing`` (BoolTensor
    [n_items, M], True where an item's row is all zero, i.e. it lacks that modality; row 0 = padding)."""

    def __init__(self, config):
        super().__init__(config)
        self.modal_features, self.modal_missing = self._load_modal_features()

    def _feature_file(self, modality):
        config = self.config
        if modality == "text":
            suffix = config["text_suffix"] or config["plm_suffix"]
        else:
            suffix = config["img_suffix"]
        return os.path.join(self._feature_folder(modality, suffix), f"{self.dataset_name}.{suffix}")

    def _feature_folder(self, modality, suffix):
        """`feature_path` if set; for RecBole's bundled ml-100k (no feature files) the plugin's cache of
        text features, built on first use; otherwise the dataset folder."""
        if self.config["feature_path"]:
            return self.config["feature_path"]
        if self.dataset_name == "ml-100k" and modality == "text":
            return ensure_text_features(self.config["data_path"], suffix, self.config["text_encoder"])
        return self.config["data_path"]

    def _item_rows(self):
        """File row of every internal item id (entry 0, the padding item, is unused)."""
        tokens = self.field2id_token[self.iid_field][1:]
        try:
            rows = np.array([int(token) for token in tokens], dtype=np.int64)
        except ValueError:
            bad = next(token for token in tokens if not str(token).lstrip("-").isdigit())
            raise FeatureFileError(
                f"item token {bad!r} of dataset {self.dataset_name} is not a row index. Feature files are "
                f"indexed by item token, so tokens must be integers 0..N-1: convert the data with "
                f"`python -m dataset_preprocess` (it writes .item2index and index tokens)."
            ) from None
        if rows.size and rows.min() < 0:
            raise FeatureFileError(f"dataset {self.dataset_name}: negative item token {rows.min()}")
        return rows

    def _aligned_table(self, path, dim, rows):
        """[item_num, dim] float32 table: row i = file row of internal item i, row 0 = zeros."""
        table = read_feature_file(path, dim, min_rows=int(rows.max()) + 1 if rows.size else 0)
        aligned = np.zeros((self.item_num, table.shape[1]), dtype=np.float32)
        aligned[1:] = table[rows]
        return aligned

    def _load_modal_features(self):
        rows = self._item_rows()
        dims = {"text": self.config["plm_size"], "img": self.config["img_size"]}
        features, missing = {}, []
        for modality in parse_modalities(self.config["modal_type"]):
            path = self._feature_file(modality)
            aligned = self._aligned_table(path, dims[modality], rows)
            features[modality] = torch.from_numpy(aligned)
            missing.append(~aligned.any(axis=1))
            self.logger.info(
                f"{modality} features: {path} ({aligned.shape[1]}-d), "
                f"{int(missing[-1][1:].sum())} of {self.item_num - 1} items without this modality"
            )
        return features, torch.from_numpy(np.stack(missing, axis=1))


class MISSRecPretrainDataset(MISSRecDataset):
    """Pre-training variant: also holds ``augmented_text`` ([n_items, plm_size] float32), the text features
    of word-dropped item texts (`plm_suffix_aug`, UniSRec's ``.feat2CLS``) that word-drop views read.

    A merged multi-domain set (``dataset_preprocess merge-pretrain``) is an ordinary dataset folder whose item
    tokens already run over all domains, so nothing else differs; its ``.pt_datasets`` is only logged.
    """

    def __init__(self, config):
        super().__init__(config)
        suffix = config["plm_suffix_aug"]
        path = os.path.join(self._feature_folder("text", suffix), f"{self.dataset_name}.{suffix}")
        self.augmented_text = torch.from_numpy(self._aligned_table(path, config["plm_size"], self._item_rows()))
        self.logger.info(f"word-dropped text features: {path}")
        domains = os.path.join(config["data_path"], f"{self.dataset_name}.pt_datasets")
        if os.path.isfile(domains):
            with open(domains) as handle:
                self.logger.info(f"pre-training domains: {handle.read().strip()}")
