"""What the text and image encoders share: device choice, quiet checkpoint loading, CLIP towers, L2 rows."""
import contextlib

import numpy as np
import torch
from transformers.utils import logging as hf_logging


def resolve_device(device):
    """``"auto"`` picks the GPU when there is one, so one command line works on both kinds of machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def quiet_loading():
    """Loading one tower of a CLIP checkpoint makes transformers print every weight of the other tower as
    "unexpected"; that is by design here, so the report (and the per-weight progress bar) is silenced while
    loading, and only then."""
    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def clip_tower_config(config, tower):
    """Sub-config of one CLIP tower (``"text"`` or ``"vision"``) that carries the checkpoint's projection size.

    A tower config has its own ``projection_dim`` (default 512) that full CLIP checkpoints do not always keep
    in step with the top-level one; the projection weights follow the top-level value.
    """
    sub = getattr(config, f"{tower}_config")
    sub.projection_dim = config.projection_dim
    return sub


def l2_normalise(table):
    """Unit rows; all-zero rows (missing modality) stay zero instead of becoming NaN."""
    table = np.asarray(table, dtype=np.float32)
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    return np.divide(table, norms, out=np.zeros_like(table), where=norms > 0)
