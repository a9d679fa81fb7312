"""Trainers: RecBole's, with safe checkpoints, plus MISSRec's epoch-start interest discovery.

RecBole 1.2.1 pickles its Config into checkpoints and reloads them with ``torch.load`` defaults, which
fails on torch >= 2.6 (``weights_only=True``) and would unpickle arbitrary objects otherwise. Every trainer
this plugin hands out therefore saves plain tensors, atomically, and loads with ``weights_only=True``.
"""
import os
import tempfile
from time import perf_counter

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color


def save_state(state, path):
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_state(path, device="cpu"):
    """Load a checkpoint written by :func:`save_state` (tensors and plain containers only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=device, weights_only=True)


class SafeCheckpointMixin:
    """Replaces RecBole's pickled-Config checkpoints by weights-only ones (see module docstring)."""

    def _checkpoint_state(self, epoch):
        return {
            "model": self.config["model"],
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        save_state(self._checkpoint_state(epoch), path)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def resume_checkpoint(self, resume_file):
        checkpoint = load_state(str(resume_file), self.device)
        if checkpoint["model"].lower() != self.config["model"].lower():
            raise ValueError(f"{resume_file} holds a {checkpoint['model']} model, not {self.config['model']}")
        self.saved_model_file = str(resume_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Resumed from {resume_file}: next epoch {self.start_epoch}")

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            path = model_file or self.saved_model_file
            self.model.load_state_dict(load_state(path, self.device)["state_dict"])
            self.logger.info(f"Loading model parameters from {path}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


class EpochHistoryMixin:
    """Keeps one record per epoch (seconds, loss, validation score) for reports and benchmarks; RecBole
    only logs these as text."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.history = []

    def _before_epoch(self, epoch_idx):
        """Work that belongs to an epoch's training time (MISSRec: interest discovery)."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = perf_counter()
        self._before_epoch(epoch_idx)
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        total = sum(loss) if isinstance(loss, tuple) else loss
        self.history.append({"epoch": epoch_idx, "train_seconds": perf_counter() - start, "train_loss": float(total)})
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        start = perf_counter()
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        if self.history:
            self.history[-1].update(
                valid_seconds=perf_counter() - start, valid_score=float(score), valid_result=dict(result)
            )
        return score, result


def with_plugin_trainer(trainer_class):
    """The given RecBole trainer class with weights-only checkpoints and an epoch history."""
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    return type(trainer_class.__name__, (EpochHistoryMixin, SafeCheckpointMixin, trainer_class), {})


class MISSRecTrainer(EpochHistoryMixin, SafeCheckpointMixin, Trainer):
    """Runs interest discovery over all item-modality tokens at the start of every training epoch.

    The clustering is seeded from the run seed and the epoch, so a run is deterministic; the centroids
    are model buffers and travel with every checkpoint, so a loaded model evaluates without re-clustering.
    """

    def _before_epoch(self, epoch_idx):
        generator = torch.Generator().manual_seed(int(self.config["seed"]) * 1000 + epoch_idx)
        used = self.model.discover_interests(generator)
        self.logger.info(f"epoch {epoch_idx} interest discovery: {used} of {self.model.n_interests} interests used")
