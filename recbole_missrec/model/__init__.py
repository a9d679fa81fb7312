"""The plugin's model families, one package each; ``__all__`` is what ``get_model`` finds by name (an alias
runs as its class, with that class's yaml)."""
from recbole_missrec.model.missrec import MISSRec
from recbole_missrec.model.msm4sr import MSM4SR
from recbole_missrec.model.sasrec import HistorySASRec
from recbole_missrec.model.unisrec import UniSRec

MP4SR = MSM4SR  # the name MSM4SR took in the paper's v2 and its repository

__all__ = ["MISSRec", "MSM4SR", "MP4SR", "UniSRec", "HistorySASRec"]
