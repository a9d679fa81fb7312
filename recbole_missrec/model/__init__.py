from recbole_missrec.model.missrec import MISSRec

__all__ = ["MISSRec"]
