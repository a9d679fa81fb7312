"""MISSRec (ACM MM 2023): the model, its interest discovery, fusion, views and diversity penalty.

The family uses the core's dataset and trainers; its stage files are ``properties/model/MISSRec*.yaml``.
"""
from recbole_missrec.model.missrec.missrec import MISSRec

__all__ = ["MISSRec"]
