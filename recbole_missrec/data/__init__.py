from recbole_missrec.data.dataset import MISSRecDataset

__all__ = ["MISSRecDataset"]
