"""UniSRec (Hou et al., KDD 2022): text-based universal sequence representations, the same-protocol peer of
MISSRec. The model, and its pre-training view (item drop or word drop).

The family uses the core's dataset and trainers; its stage files are ``properties/model/UniSRec*.yaml``.
"""
from recbole_missrec.model.unisrec.unisrec import UniSRec

__all__ = ["UniSRec"]
