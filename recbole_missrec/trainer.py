"""The plugin's trainer engine: RecBole's ``Trainer`` plus what a plugin model family needs, and nothing
that belongs to one family.

- **Weights-only checkpoints.** RecBole 1.2.1 pickles its Config into checkpoints and reloads them with
  ``torch.load`` defaults, which fails on torch >= 2.6 (``weights_only=True``) and would unpickle arbitrary
  objects otherwise. Every trainer the plugin hands out (RecBole's baselines' too) saves plain tensors and
  the resolved config as plain values, atomically, and loads with ``weights_only=True``.
- **An epoch history** (seconds, loss terms, validation results) for reports; RecBole only logs text.
- **Freed memory kept for reuse** within an epoch (``reuse_freed_memory``) and **handed back** between
  training and evaluation (``release_freed_memory``).
- **Model hooks**, all optional: ``on_epoch_start(epoch, generator)`` (rank 0 runs it; it may change the
  model's persistent buffers, which are then broadcast; it may return a line to log),
  ``prepare_batch(interaction, generator)`` (adds stage inputs such as augmented views to a training batch
  before it is split across ranks), ``calculate_loss`` returning a dict of named terms, and a
  ``gather_rows`` attribute that the engine points at the cross-rank gather under DDP.
- **Data-parallel steps** under ``torchrun`` (``distributed.py``), **resumable fixed-epoch
  pre-training** (:class:`PretrainTrainer`) and **resumable training with early stopping**
  (:class:`ResumableFitMixin`, RecBole's baselines too): every random stream in the checkpoint, so a
  resumed run continues bit-for-bit.
"""
import copy
import ctypes
import ctypes.util
import functools
import glob
import math
import os
import random
import re
from collections import OrderedDict
from time import perf_counter
from unittest import mock

import numpy as np
import recbole.trainer.trainer
import torch
from recbole.evaluator import Collector, Evaluator
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_missrec import distributed
from recbole_missrec.atomic import atomic_open
from recbole_missrec.utils import recbole_deprecations_silenced

# Keys RecBole's Config derives itself; a stored config leaves them out so that it can be fed back in.
DERIVED_CONFIG_KEYS = ("MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec", "local_rank",
                       "valid_neg_sample_args", "test_neg_sample_args")
# Keys that say where a run reads, writes and logs, not what it computes: a resumed run may change them.
PLACEMENT_CONFIG_KEYS = frozenset({"checkpoint_dir", "data_path", "feature_path", "dataset_save_path",
                                   "dataloaders_save_path", "save_dataset", "save_dataloaders", "gpu_id", "use_gpu",
                                   "worker", "state", "show_progress", "log_wandb", "wandb_project"})
# The training budget: a resumed run with validation may raise either (see ResumableFitMixin.resume_progress).
BUDGET_CONFIG_KEYS = ("epochs", "stopping_step")


class CheckpointError(ValueError):
    """A file is not a checkpoint of this plugin, or not one that fits; the message names the file."""


def save_state(state, path):
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def load_state(path, device="cpu"):
    """Load a checkpoint written by :func:`save_state` (tensors and plain containers only, nothing is
    unpickled)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for foreign or damaged files
        raise CheckpointError(
            f"{path} is not a readable weights-only checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"Pass a .pth file written by recbole-missrec; RecBole's own checkpoints pickle their Config and are "
            f"not loaded, by design."
        ) from None


def _plain(value):
    """(value with tuples as lists, True) if it is made of plain YAML/JSON types (recursively), else
    (anything, False)."""
    if value is None or isinstance(value, str):
        return value, True
    for kind in (bool, int, float):  # numpy's float64 is a float: stored as one, torch's weights-only load refuses it
        if isinstance(value, kind):
            return kind(value), True
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return [item for item, _ in items], all(ok for _, ok in items)
    if isinstance(value, dict):
        items = {str(key): _plain(item) for key, item in value.items()}
        return {key: item for key, (item, _) in items.items()}, all(ok for _, ok in items.values())
    return None, False


def changed_settings(stored, current, free=()):
    """``key: stored -> current`` for every setting two plain configs disagree on, placement keys and ``free``
    aside. A key only one of them has (a setting added to the plugin since the stored run began) is not compared."""
    keys = sorted((set(stored) & set(current)) - PLACEMENT_CONFIG_KEYS - set(free))
    return [f"{key}: {stored[key]!r} -> {current[key]!r}" for key in keys if stored[key] != current[key]]


def checkpoint_beside(progress_path, stored_path):
    """The best checkpoint a progress file names, or its namesake beside the progress file when the stored path
    is gone: a run writes both into one ``checkpoint_dir``, so a folder moved or renamed whole still resumes."""
    if os.path.isfile(stored_path):
        return stored_path
    beside = os.path.join(os.path.dirname(os.path.abspath(progress_path)), os.path.basename(stored_path))
    return beside if os.path.isfile(beside) else stored_path


def last_trained_epoch(state):
    """The last epoch a progress file's run trained. An ended run's file records its budget's last epoch
    (``epochs - 1``) even when early stopping ended it sooner; the history has one record per epoch."""
    return state["history"][-1]["epoch"] if state["history"] else state["epoch"]


def plain_config(config):
    """The resolved config as plain values, without the keys RecBole derives; ``PluginConfig(config_dict=
    plain_config(config))`` rebuilds the same run. Training-time negative sampling that is off is None."""
    plain = {}
    for key, value in config.final_config_dict.items():
        if key in DERIVED_CONFIG_KEYS:
            continue
        converted, ok = _plain(value)
        if ok:
            plain[key] = converted
    negatives = plain.get("train_neg_sample_args")
    if isinstance(negatives, dict) and negatives.get("distribution") == "none":
        plain["train_neg_sample_args"] = None
    return plain


class ShiftedEvaluator(Evaluator):
    """RecBole's evaluator computing every ``metric@k`` at k + ``offset`` and reporting it as ``metric@k``.

    MISSRec's reference evaluator was off by one (its "@10" is @11, spec §9 #1); ``metric_topk_offset: 1``
    reproduces that labelling for comparisons with its published numbers. The default 0 is the true @K.
    """

    def __init__(self, config, offset):
        self.offset = offset
        super().__init__(config)

    def evaluate(self, dataobject):
        results = super().evaluate(dataobject)
        return OrderedDict((re.sub(r"@(\d+)$", lambda m: f"@{int(m.group(1)) - self.offset}", name), value)
                           for name, value in results.items())


def shifted_config(config, offset):
    """A copy of ``config`` whose ``topk`` is moved by ``offset`` (the original is left unchanged)."""
    shifted = copy.copy(config)
    shifted.final_config_dict = dict(config.final_config_dict, topk=[k + offset for k in config["topk"]])
    return shifted


def _with_pid(path):
    """RecBole names a checkpoint by model and time to the second, so two runs started in the same second
    in one folder wrote (and reloaded) one file; the process id makes the name the run's own."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}-{os.getpid()}{suffix}"


class SafeCheckpointMixin:
    """Replaces RecBole's pickled-Config checkpoints by weights-only ones (see module docstring), and
    applies ``metric_topk_offset`` to evaluation."""

    def __init__(self, config, model):
        # RecBole's ensure_dir checks, then creates: DDP ranks starting together race on it and one fails.
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        with recbole_deprecations_silenced():
            super().__init__(config, model)
        self.saved_model_file = _with_pid(self.saved_model_file)
        offset = int(config["metric_topk_offset"] or 0)
        if offset:
            shifted = shifted_config(config, offset)
            self.eval_collector = Collector(shifted)
            self.evaluator = ShiftedEvaluator(shifted, offset)

    def _checkpoint_state(self, epoch):
        return {
            "model": self.config["model"],
            "config": plain_config(self.config),
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

    def save_pretrained_model(self, epoch, saved_model_file):
        """RecBole's PretrainTrainer (S3Rec's pre-training stage) saves through here: weights only, so that
        RecBole's fine-tuning stage can ``torch.load`` the file on torch >= 2.6."""
        if distributed.is_main():
            save_state(self._checkpoint_state(epoch), saved_model_file)
        self.saved_model_file = saved_model_file

    def resume_checkpoint(self, resume_file):
        checkpoint = load_state(str(resume_file), self.device)
        if checkpoint["model"].lower() != self.config["model"].lower():
            raise CheckpointError(f"{resume_file} holds a {checkpoint['model']} model, not {self.config['model']}")
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


@functools.lru_cache(maxsize=None)
def _libc_function(name):
    """A glibc function (``malloc_trim``, ``mallopt``), or None where the C library has none (macOS, musl)."""
    library = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(library), name, None) if library else None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def reuse_freed_memory():
    """Has glibc keep freed blocks of up to 1 GiB for reuse instead of unmapping them; True if it ran.

    glibc maps every block above its mmap threshold (128 KiB, raised as blocks are freed, at most 32 MiB)
    afresh and unmaps it when freed, and gives the heap's free top back above its trim threshold. A step
    that allocates and frees many such blocks (pre-training at batch 4096: the activations, attention maps
    and in-batch logits of 4096 sequences and their views) page-faults them in again every time, and the
    kernel zeroes them: system time. With both thresholds raised (1 GiB, 2 GiB) freed blocks are reused
    from the heap, which then holds more at its peak; ``release_freed_memory`` still hands them back at
    each switch between training and evaluation. Measured (README, Cost): pre-training epochs 18-27 %
    shorter for 26-29 % more peak memory; fine-tuning at batch 512 no faster, 12-21 % more memory. Hence a
    setting (``reuse_freed_memory``), on in MISSRec's pre-training. Left alone where the process was started
    with glibc's own allocator variables, so an explicit choice (``benchmarks/epoch_cost.py
    --mmap-threshold``) wins.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None or any(name in os.environ for name in ALLOCATOR_VARIABLES):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def release_freed_memory():
    """Returns the C heap's free pages to the operating system (glibc ``malloc_trim(0)``); True if it ran.

    CPU tensors come from malloc, and glibc keeps the pages of freed blocks mapped: after a training epoch
    the process holds its largest batch's activations as free heap, and an evaluation that follows lays its
    own buffers out elsewhere, so the peak resident memory grows by both. Neither torch nor RecBole trims
    the heap. One call at each switch between training and evaluation costs milliseconds, plus the page
    faults of memory used again.
    """
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


class EpochHistoryMixin:
    """Keeps one record per epoch (seconds, loss and its named terms, validation results) for reports and
    benchmarks; RecBole only logs these as text. The first epoch a process trains after resuming a run is
    marked ``resumed``: a report can then tell that the run's process figures (CPU time, peak RSS) cover
    only its last sitting, while the per-epoch seconds cover them all."""

    _resumes_here = False  # set by a resume: the next epoch trained is the first of this process

    def __init__(self, config, model):
        super().__init__(config, model)
        self.history = []
        self.loss_names = None
        if config["reuse_freed_memory"]:
            reuse_freed_memory()

    def _before_epoch(self, epoch_idx):
        """Work that belongs to an epoch's training time (the model's ``on_epoch_start`` hook)."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = perf_counter()
        self._before_epoch(epoch_idx)
        steps_start = perf_counter()
        with recbole_deprecations_silenced():  # RecBole builds a deprecated GradScaler every epoch
            loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        release_freed_memory()
        end = perf_counter()
        total = sum(loss) if isinstance(loss, tuple) else loss
        record = {"epoch": epoch_idx, "train_seconds": end - start, "train_loss": float(total),
                  "before_epoch_seconds": steps_start - start}
        if isinstance(loss, tuple):
            record["train_loss_terms"] = [float(term) for term in loss]
            if self.loss_names:
                record["loss_names"] = list(self.loss_names)
        if self._resumes_here:
            record["resumed"] = True
            self._resumes_here = False
        self.history.append(record)
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        start = perf_counter()
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        release_freed_memory()
        if self.history:
            self.history[-1].update(
                valid_seconds=perf_counter() - start, valid_score=float(score),
                valid_result={name: float(value) for name, value in result.items()},
            )
        return score, result


class ResumableFitMixin:
    """Training with early stopping that a later process can continue where this one stopped.

    RecBole's ``resume_checkpoint`` restores a best checkpoint: it holds no history and no random streams,
    and it goes back to the last improvement, so a run killed several epochs after its best repeats them
    on other random draws. With ``progress_file`` set, the state after every validation (model, optimizer,
    early-stopping counters, best result and the best checkpoint's path, history, every random stream) is
    written atomically to that one file. After ``resume_progress``, ``fit`` continues bit-for-bit; when the
    stored run had ended, and would have under this run's budget too, it returns the stored best result
    without training.
    """

    progress_file = None
    _finished = False
    _resumed_rng = None

    def _progress_state(self, epoch, train_data, finished):
        return {
            "model": self.config["model"], "config": plain_config(self.config), "train_stage": "progress",
            "epoch": epoch, "finished": finished, "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score), "best_valid_result": _plain(self.best_valid_result)[0],
            "best_checkpoint": self.saved_model_file, "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "history": self.history, "loss_names": self.loss_names,
            "rng": distributed.gather_objects(rng_state(train_data.generator)),
        }

    def _save_progress(self, epoch, train_data, finished=False):
        state = self._progress_state(epoch, train_data, finished)  # every rank takes part in gathering
        if distributed.is_main():
            save_state(state, self.progress_file)

    def _restore(self, state, path):
        """What every resumable run restores from ``state`` (read from ``path``): weights, optimizer, history,
        the next epoch, and this rank's random streams, set when ``fit`` starts (they include the loader's)."""
        if len(state["rng"]) != distributed.world_size():
            raise CheckpointError(
                f"{path} was written by {len(state['rng'])} processes; resume it with as many "
                f"(now {distributed.world_size()}) to continue bit-for-bit"
            )
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.start_epoch = state["epoch"] + 1
        self._resumed_rng = state["rng"][distributed.rank()]
        self._resumes_here = True

    def _continue_random_streams(self, train_data):
        """Set the random streams a resumed run stored, once, before its first epoch."""
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng, train_data.generator)
            self._resumed_rng = None

    def _refuse_other_settings(self, stored, path, free=(), growing=()):
        """Raise when the run stored in ``path`` had settings other than this run's (``free``: keys that may
        change on resuming; ``growing``: keys that may grow, not shrink)."""
        current = plain_config(self.config)
        shrunk = {key for key in growing if key in stored and key in current and current[key] < stored[key]}
        changed = changed_settings(stored, current, set(free) | (set(growing) - shrunk))
        if changed:
            raise CheckpointError(f"{path} continues a run with other settings ({'; '.join(changed)}): run with the "
                                  f"stored settings, or delete {path} (or pick another checkpoint_dir) to start afresh")

    def resume_progress(self, path):
        """Load the progress file ``path``, written by a run of the same model and settings, or of the same
        settings with a smaller budget. More ``epochs`` or a longer patience (``stopping_step``) continue the
        stored run from its last epoch, even when it had ended: the run with the larger budget trains the same
        epochs up to there, so the result is the one a fresh run with it would give, without repeating them.
        Any other change (a smaller budget, another learning rate) is refused rather than continued: the
        stored epochs, or the stored result of an ended run, would be reported as the new settings' run."""
        state = load_state(str(path), self.device)
        if state.get("train_stage") != "progress" or state.get("model") != self.config["model"]:
            raise CheckpointError(f"{path} is not a {self.config['model']} progress file of this plugin: pass the "
                                  f"file a run with `resume` wrote, or delete it to start afresh")
        self._refuse_other_settings(state["config"], path, growing=BUDGET_CONFIG_KEYS)
        best_checkpoint = checkpoint_beside(path, state["best_checkpoint"])
        if not os.path.isfile(best_checkpoint):
            raise CheckpointError(f"{path} continues a run whose best checkpoint {state['best_checkpoint']} is gone: "
                                  f"delete {path} to start afresh")
        self._restore(state, path)
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"]
        self.saved_model_file = best_checkpoint
        self.loss_names = state["loss_names"]
        if state["finished"]:
            self.start_epoch = last_trained_epoch(state) + 1
        # Nothing left when early stopping ended it and would at this patience too, or the budget is spent.
        self._finished = self.cur_step > self.stopping_step or self.start_epoch >= self.epochs
        self.logger.info(f"Resumed from {path}: "
                         + ("finished, nothing to train" if self._finished else f"next epoch {self.start_epoch}"))

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.progress_file is None:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        if self._finished:  # RecBole would overwrite the best checkpoint
            return self.best_valid_score, self.best_valid_result
        self._continue_random_streams(train_data)

        def after_validation(epoch_idx, valid_score):
            self._save_progress(epoch_idx, train_data)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        result = super().fit(train_data, valid_data, verbose, saved, show_progress, after_validation)
        self._save_progress(self.epochs - 1, train_data, finished=True)
        self._finished = True
        return result


def with_plugin_trainer(trainer_class):
    """The given RecBole trainer class with weights-only checkpoints, an epoch history and resumable fits."""
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    return type(trainer_class.__name__, (ResumableFitMixin, EpochHistoryMixin, SafeCheckpointMixin, trainer_class), {})


class NullWriter:
    """Takes RecBole's TensorBoard calls on ranks other than 0 and writes nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class HookedStepMixin:
    """Calls the model's hooks (see the module docstring) and runs each optimisation step, data-parallel
    under ``torchrun``: the global batch from the loader (``prepare_batch`` may extend it), cut to this
    rank's share, loss through the DistributedDataParallel wrapper, weighted by the share (see
    ``distributed.py``). Single-process runs take the plain path: the model's loss on the batch.

    Validation runs on rank 0 alone and its score is broadcast, so every rank takes the same early-stopping
    decision; rank 0 alone writes checkpoints and TensorBoard events.
    """

    # Per-epoch seeds of the hooks' generators: seed * 1000 + epoch (+ offset), so a run is deterministic
    # and a run resumed at an epoch boundary draws what an uninterrupted one would.
    EPOCH_HOOK_SEED, BATCH_HOOK_SEED = 0, 500

    def __init__(self, config, model):
        if distributed.is_main():
            super().__init__(config, model)
        else:
            # RecBole's Trainer.__init__ opens a SummaryWriter (a folder and an event file) unconditionally.
            with mock.patch.object(recbole.trainer.trainer, "get_tensorboard", lambda logger: NullWriter()):
                super().__init__(config, model)
        self.train_loss = distributed.loss_function(model)
        if distributed.is_distributed() and hasattr(model, "gather_rows"):
            model.gather_rows = distributed.gather_rows
        self.saved_model_file = distributed.broadcast_object(self.saved_model_file)  # names carry a time and pid
        self._epoch = 0
        self._batch_generator = None

    def _seed(self, offset):
        return int(self.config["seed"]) * 1000 + offset + self._epoch

    def _before_epoch(self, epoch_idx):
        self._epoch = epoch_idx
        self._batch_generator = None
        hook = getattr(self.model, "on_epoch_start", None)
        if hook is None:
            return
        message = None
        if distributed.is_main():
            message = hook(epoch_idx, torch.Generator().manual_seed(self._seed(self.EPOCH_HOOK_SEED)))
        distributed.broadcast_buffers(self.model)
        if message:
            self.logger.info(message)

    def _prepare_batch(self, interaction):
        hook = getattr(self.model, "prepare_batch", None)
        if hook is None:
            return interaction
        device = self.device
        if self._batch_generator is None:
            self._batch_generator = torch.Generator(device=device).manual_seed(self._seed(self.BATCH_HOOK_SEED))
        return hook(interaction, self._batch_generator)

    def _step_loss(self, interaction):
        share, weight = distributed.shard(self._prepare_batch(interaction))
        losses = self.train_loss(share)
        if isinstance(losses, dict):
            self.loss_names = list(losses)
            losses = tuple(losses.values())
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


class PluginTrainer(HookedStepMixin, ResumableFitMixin, EpochHistoryMixin, SafeCheckpointMixin, Trainer):
    """Training with validation and early stopping (RecBole's loop) for the plugin's model families."""


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


class PretrainTrainer(PluginTrainer):
    """Pre-training of a plugin model family.

    ``pretrain_select: fixed_epochs`` (MISSRec's reference): a fixed number of epochs on the train split,
    no validation, a checkpoint every ``save_step`` epochs and after the last one. A checkpoint holds the
    model, optimizer, scheduler, epoch, history and every rank's random states, so ``resume_checkpoint`` +
    ``fit`` continue bit-for-bit as if the run had never stopped.
    ``pretrain_select: best_valid`` (MSM4SR's reference): RecBole's loop, validated every epoch, keeping
    the best checkpoint.
    """

    @staticmethod
    def validates(config):
        """Whether this stage trains with validation (then the run loads all three splits)."""
        select = config["pretrain_select"] or "fixed_epochs"
        if select not in ("fixed_epochs", "best_valid"):
            raise ValueError(f"pretrain_select={select!r} is not supported; use fixed_epochs or best_valid")
        return select == "best_valid"

    def __init__(self, config, model):
        super().__init__(config, model)
        if self.validates(config):
            return
        self.save_step = config["save_step"]
        self.lr_schedule = config["lr_schedule"] or "constant"
        self.scheduler = self._build_scheduler(self.lr_schedule)
        self.checkpoint_prefix = os.path.join(self.checkpoint_dir, f"{config['model']}-{config['dataset']}-pretrain")
        self.saved_model_file = None

    def _build_scheduler(self, kind):
        """constant (the reference) or cosine decay to zero over the run, stepped once per epoch."""
        if kind == "constant":
            factor = lambda epoch: 1.0  # noqa: E731
        elif kind == "cosine":
            factor = lambda epoch: 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))  # noqa: E731
        else:
            raise ValueError(f"lr_schedule={kind!r} is not supported; use constant or cosine")
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _pretrain_state(self, epoch, train_data):
        return {
            "model": self.config["model"], "config": plain_config(self.config), "train_stage": "pretrain",
            "epoch": epoch, "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
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
        if self.validates(self.config):
            return super().resume_checkpoint(resume_file)
        checkpoint = load_state(str(resume_file), self.device)
        if checkpoint.get("train_stage") != "pretrain" or checkpoint.get("model") != self.config["model"]:
            raise CheckpointError(f"{resume_file} is not a {self.config['model']} pre-training checkpoint of this plugin")
        # More epochs continue a constant-rate run exactly; a cosine schedule's rates depend on its length.
        free = ("save_step", "epochs") if self.lr_schedule == "constant" else ("save_step",)
        self._refuse_other_settings(checkpoint["config"], resume_file, free)
        self._restore(checkpoint, resume_file)
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.saved_model_file = str(resume_file)
        self.logger.info(f"Resumed from {resume_file}: next epoch {self.start_epoch + 1} of {self.epochs}")

    def _log_epoch(self, epoch, record):
        names = record.get("loss_names") or [f"term {i + 1}" for i in range(len(record["loss_per_batch"]))]
        terms = ", ".join(f"{name} {term:.4f}" for name, term in zip(names, record["loss_per_batch"]))
        self.logger.info(
            f"pretrain epoch {epoch + 1}/{self.epochs}: mean batch loss {sum(record['loss_per_batch']):.4f} "
            f"({terms}), {record['train_seconds']:.1f}s ({record['before_epoch_seconds']:.1f}s before the "
            f"epoch's steps), {record['sequences_per_second']:.0f} sequences/s"
        )

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Fixed epochs: train for ``epochs`` epochs and return the per-epoch history (loss terms, seconds,
        sequences/s). Best-valid selection: RecBole's fit."""
        if self.validates(self.config):
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self._continue_random_streams(train_data)
        rows, batches = len(train_data.dataset), len(train_data)
        for epoch in range(self.start_epoch, self.epochs):
            self._train_epoch(train_data, epoch, show_progress=show_progress)
            self.scheduler.step()
            record = self.history[-1]
            terms = record.get("train_loss_terms", [record["train_loss"]])
            record["loss_per_batch"] = [term / batches for term in terms]
            record["sequences_per_second"] = rows / (record["train_seconds"] - record["before_epoch_seconds"])
            if verbose:
                self._log_epoch(epoch, record)
            if saved and ((epoch + 1) % self.save_step == 0 or epoch + 1 == self.epochs):
                self._save_pretrain_checkpoint(epoch, train_data)
        return self.history
