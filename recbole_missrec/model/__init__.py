"""The plugin's model families, one package each; ``__all__`` is what ``get_model`` finds by name."""
from recbole_missrec.model.missrec import MISSRec

__all__ = ["MISSRec"]
