"""HistorySASRec: RecBole's SASRec with the plugin's ``history_bias``, the ID baseline for that score term.

Not a plugin-protocol model (no stages, no features): it runs RecBole's flow (dataset, trainer, evaluator)
and starts from RecBole's ``SASRec.yaml`` defaults (``PluginConfig`` reads the yaml of the RecBole model a
plugin class extends).
"""
from recbole_missrec.model.sasrec.history_sasrec import HistorySASRec

__all__ = ["HistorySASRec"]
