from recbole_missrec.data.dataset import MultiModalDataset
from recbole_missrec.data.feature_store import FeatureStore

__all__ = ["FeatureStore", "MultiModalDataset"]
