"""Trainers: RecBole's, with safe checkpoints, plus MISSRec's interest discovery, pre-training and DDP.

RecBole 1.2.1 pickles its Config into checkpoints and reloads them with ``torch.load`` defaults, which
fails on torch >= 2.6 (``weights_only=True``) and would unpickle arbitrary objects otherwise. Every trainer
this plugin hands out therefore saves plain tensors, atomically, and loads with ``weights_only=True``.
"""
import glob
import math
import os
import random
import re
from time import perf_counter
from unittest import mock

import numpy as np
import recbole.trainer.trainer
import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_missrec import distributed
from recbole_missrec.atomic import atomic_open
from recbole_missrec.data.transform import PretrainAugmentation


def save_state(state, path):
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def load_state(path, device="cpu"):
    """Load a checkpoint written by :func:`save_state` (tensors and plain containers only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=device, weights_only=True)


class SafeCheckpointMixin:
    """Replaces RecBole's pickled-Config checkpoints by weights-only ones (see module docstring)."""

    def __init__(self, config, model):
        # RecBole's ensure_dir checks, then creates: DDP ranks starting together race on it and one fails.
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        super().__init__(config, model)

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
        if not distributed.is_main():
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
        steps_start = perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        end = perf_counter()
        total = sum(loss) if isinstance(loss, tuple) else loss
        record = {"epoch": epoch_idx, "train_seconds": end - start, "train_loss": float(total),
                  "before_epoch_seconds": steps_start - start}
        if isinstance(loss, tuple):
            record["train_loss_terms"] = [float(term) for term in loss]
        self.history.append(record)
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


class NullWriter:
    """Takes RecBole's TensorBoard calls on ranks other than 0 and writes nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class DistributedStepMixin:
    """One optimisation step under DDP: the global batch from the loader (``_prepare_batch`` may augment it),
    cut to this rank's share, loss through the DistributedDataParallel wrapper, weighted by the share
    (see ``distributed.py``). Single-process runs take the plain path: ``model.calculate_loss`` on the batch.

    Validation runs on rank 0 alone and its score is broadcast, so every rank takes the same early-stopping
    decision; rank 0 alone writes checkpoints and TensorBoard events.
    """

    def __init__(self, config, model):
        if distributed.is_main():
            super().__init__(config, model)
        else:
            # RecBole's Trainer.__init__ opens a SummaryWriter (a folder and an event file) unconditionally.
            with mock.patch.object(recbole.trainer.trainer, "get_tensorboard", lambda logger: NullWriter()):
                super().__init__(config, model)
        self.train_loss = distributed.loss_function(model)
        self.saved_model_file = distributed.broadcast_object(self.saved_model_file)  # names carry a time

    def _prepare_batch(self, interaction):
        return interaction

    def _step_loss(self, interaction):
        share, weight = distributed.shard(self._prepare_batch(interaction))
        losses = self.train_loss(share)
        if weight == 1.0:
            return losses
        return tuple(weight * loss for loss in losses) if isinstance(losses, tuple) else weight * losses

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func or self._step_loss, show_progress=show_progress
        )

    def _valid_epoch(self, valid_data, show_progress=False):
        result = super()._valid_epoch(valid_data, show_progress=show_progress) if distributed.is_main() else None
        return distributed.broadcast_object(result)


class InterestDiscoveryMixin:
    """Interest discovery over all item-modality tokens at the start of every training epoch.

    The clustering is seeded from the run seed and the epoch, so a run is deterministic; the centroids
    are model buffers and travel with every checkpoint, so a loaded model evaluates without re-clustering.
    Under DDP rank 0 clusters and broadcasts (GPU k-means is not bit-reproducible across processes).
    """

    def _before_epoch(self, epoch_idx):
        used = 0
        if distributed.is_main():
            generator = torch.Generator().manual_seed(int(self.config["seed"]) * 1000 + epoch_idx)
            used = self.model.discover_interests(generator)
        distributed.broadcast_buffers(self.model, "interest")
        self.logger.info(f"epoch {epoch_idx} interest discovery: {used} of {self.model.n_interests} interests used")


class MISSRecTrainer(InterestDiscoveryMixin, DistributedStepMixin, EpochHistoryMixin, SafeCheckpointMixin, Trainer):
    """Fine-tuning: RecBole's loop with interest discovery each epoch, DDP steps and safe checkpoints."""


def rng_state(loader_generator):
    """Every random stream a training epoch draws from, as tensors and plain containers (weights-only)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
        "loader": loader_generator.get_state(),
    }


def set_rng_state(state, loader_generator):
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    loader_generator.set_state(state["loader"])


def latest_checkpoint(prefix):
    """The checkpoint ``<prefix>-<epoch>.pth`` with the highest epoch, or None."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d+)\.pth$")
    found = [(int(m.group(1)), path) for path in glob.glob(f"{glob.escape(prefix)}-*.pth")
             if (m := pattern.match(os.path.basename(path)))]
    return max(found)[1] if found else None


class MISSRecPretrainTrainer(InterestDiscoveryMixin, DistributedStepMixin, EpochHistoryMixin, SafeCheckpointMixin, Trainer):
    """Pre-training (spec §6.1): a fixed number of epochs, no validation, a checkpoint every ``save_step``
    epochs and after the last one.

    A checkpoint holds the model, optimizer, scheduler, epoch, history and every rank's random states, so
    ``resume_checkpoint`` + ``fit`` continue bit-for-bit as if the run had never stopped. The augmentation
    and the clustering are re-seeded per epoch; the rest (dropout, shuffling) is restored from the file.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.save_step = config["save_step"]
        self.augment = PretrainAugmentation(config)
        self.scheduler = self._build_scheduler(config["lr_schedule"])
        self.checkpoint_prefix = os.path.join(self.checkpoint_dir, f"{config['model']}-{config['dataset']}-pretrain")
        self.saved_model_file = None
        self._resumed_rng = None

    def _build_scheduler(self, kind):
        """constant (the reference) or cosine decay to zero over the run, stepped once per epoch."""
        if kind == "constant":
            factor = lambda epoch: 1.0  # noqa: E731
        elif kind == "cosine":
            factor = lambda epoch: 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))  # noqa: E731
        else:
            raise ValueError(f"lr_schedule={kind!r} is not supported; use constant or cosine")
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _before_epoch(self, epoch_idx):
        self.augment.set_epoch(epoch_idx)
        super()._before_epoch(epoch_idx)

    def _prepare_batch(self, interaction):
        return self.augment(interaction)

    def _pretrain_state(self, epoch, train_data):
        return {
            "model": self.config["model"], "train_stage": "pretrain", "epoch": epoch,
            "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "history": self.history,
            "rng": distributed.gather_objects(rng_state(train_data.generator)),
        }

    def _save_pretrain_checkpoint(self, epoch, train_data):
        state = self._pretrain_state(epoch, train_data)  # every rank takes part in gathering the RNG states
        path = f"{self.checkpoint_prefix}-{epoch + 1}.pth"
        if distributed.is_main():
            save_state(state, path)
            self.logger.info(set_color("Saving current", "blue") + f": {path}")
        self.saved_model_file = path

    def resume_checkpoint(self, resume_file):
        checkpoint = load_state(str(resume_file), self.device)
        if checkpoint.get("train_stage") != "pretrain":
            raise ValueError(f"{resume_file} is not a pre-training checkpoint of this plugin")
        if len(checkpoint["rng"]) != distributed.world_size():
            raise ValueError(
                f"{resume_file} was written by {len(checkpoint['rng'])} processes; resume it with as many "
                f"(now {distributed.world_size()}) to continue bit-for-bit"
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.history = list(checkpoint["history"])
        self.start_epoch = checkpoint["epoch"] + 1
        self.saved_model_file = str(resume_file)
        self._resumed_rng = checkpoint["rng"][distributed.rank()]
        self.logger.info(f"Resumed from {resume_file}: next epoch {self.start_epoch + 1} of {self.epochs}")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Train for ``epochs`` epochs; returns the per-epoch history (loss terms, seconds, sequences/s)."""
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng, train_data.generator)
            self._resumed_rng = None
        rows, batches = len(train_data.dataset), len(train_data)
        for epoch in range(self.start_epoch, self.epochs):
            self._train_epoch(train_data, epoch, show_progress=show_progress)
            self.scheduler.step()
            record = self.history[-1]
            record["loss_per_batch"] = [term / batches for term in record["train_loss_terms"]]
            record["sequences_per_second"] = rows / (record["train_seconds"] - record["before_epoch_seconds"])
            if verbose:
                terms = ", ".join(f"{term:.4f}" for term in record["loss_per_batch"])
                self.logger.info(
                    f"pretrain epoch {epoch + 1}/{self.epochs}: mean batch loss {sum(record['loss_per_batch']):.4f} "
                    f"(seq-item, lambda * seq-seq, gamma * penalty: {terms}), {record['train_seconds']:.1f}s "
                    f"({record['before_epoch_seconds']:.1f}s interest discovery), "
                    f"{record['sequences_per_second']:.0f} sequences/s"
                )
            if saved and ((epoch + 1) % self.save_step == 0 or epoch + 1 == self.epochs):
                self._save_pretrain_checkpoint(epoch, train_data)
        return self.history
