"""Serving bundles: a trained model in a folder that loads without the training data, without RecBole's data
pipeline and without unpickling anything.

    manifest.json                    format, version, model, stage, item counts, source, and every other
                                     file with its sha256 and size
    weights.<h>.safetensors          the trained state dict (safetensors: tensors only); MISSRec's interest
                                     centroids and item-to-interest table are in it
    config.<h>.json                  the resolved config as plain values
    items.<h>.json                   item tokens by internal id (index 0 = padding)
    features.<store>.<h>.npz         one feature store: table [N, S, D] float32, slot_mask [N, S] bool,
                                     present [N] bool (np.load with allow_pickle=False)

``<h>`` is the start of the file's sha256. Files are never rewritten in place: an update (``add-items``)
writes new files and then replaces ``manifest.json``, so that one rename is the commit and a crash before it
leaves the previous bundle whole; files no manifest names are removed afterwards. The weights are those of
training (``trained_item_rows`` rows, padding included); rows beyond them were added later and are re-added
to the model on load.
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from recbole_missrec.atomic import atomic_write_json, publish_mode

FORMAT = "recbole-missrec-bundle"
VERSION = 1
MANIFEST = "manifest.json"
STORE_KEYS = ("table", "slot_mask", "present")
# Names of the files a bundle writes (role, hash, extension); anything else in the folder is left alone.
BUNDLE_FILE = re.compile(r"^(weights|config|items|features\.[\w-]+)\.[0-9a-f]{16}\.(safetensors|json|npz)$")


class BundleError(ValueError):
    """A bundle file is missing, damaged or does not fit the rest; the message names the file."""


class Bundle(NamedTuple):
    folder: str
    manifest: dict
    config: dict  # the resolved config, plain values
    state_dict: dict  # {name: tensor}, the trained weights
    tokens: list  # item token of every internal id; tokens[0] is the padding item
    stores: dict  # {store name: FeatureStore} over all items, added ones included


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(folder, role, extension, write):
    """Write a file through ``write(path)`` to a temporary name, sync it, and rename it to
    ``<role>.<sha256[:16]>.<extension>``. Returns its manifest entry."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{role}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        publish_mode(tmp)
        digest = sha256_file(tmp)
        name = f"{role}.{digest[:16]}.{extension}"
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {"path": name, "sha256": digest, "bytes": os.path.getsize(os.path.join(folder, name))}


def _write_json(value):
    def write(path):
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(value, handle)
    return write


def _write_store(store):
    def write(path):
        with open(path, "wb") as handle:
            np.savez(handle, table=store.table.numpy(), slot_mask=store.slot_mask.numpy(),
                     present=store.present.numpy())
    return write


def _write_weights(state_dict):
    def write(path):
        from safetensors.torch import save_file

        save_file({name: value.detach().cpu().contiguous() for name, value in state_dict.items()}, path)
    return write


def _publish_items(folder, tokens, stores):
    """Entries of the item token map and of every feature store."""
    files = {"items": _publish(folder, "items", "json", _write_json([str(token) for token in tokens]))}
    for name, store in stores.items():
        if len(store.present) != len(tokens):
            raise BundleError(f"feature store {name!r} has {len(store.present)} rows for {len(tokens)} items")
        files[f"features.{name}"] = _publish(folder, f"features.{name}", "npz", _write_store(store))
    return files


def write_bundle(out, config, state_dict, tokens, stores, normalisation, source):
    """Write a new bundle folder ``out`` (it must not exist, or be empty): everything is written into a
    temporary sibling folder that is renamed to ``out`` at the end. ``normalisation``: {"mode": the
    feature_norm the stores went through, "divisors": {store: its divisor or None}, "scale": the
    feature_scale}, applied to items added later. Returns the manifest."""
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise BundleError(f"{out} already exists and is not an empty folder: remove it or choose another --out")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    try:
        files = {"weights": _publish(staging, "weights", "safetensors", _write_weights(state_dict)),
                 "config": _publish(staging, "config", "json", _write_json(config))}
        files.update(_publish_items(staging, tokens, stores))
        manifest = {
            "format": FORMAT, "version": VERSION, "model": config["model"], "train_stage": config["train_stage"],
            "stores": list(stores), "feature_norm": normalisation, "trained_item_rows": len(tokens),
            "item_rows": len(tokens), "added": [], "source": source, "files": files,
        }
        atomic_write_json(os.path.join(staging, MANIFEST), manifest, indent=1)
        os.chmod(staging, 0o777 & ~_umask())
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_folder(parent)
    return manifest


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_bundle(checkpoint, out, data_path=None):
    """Export a plugin checkpoint (a fine-tuned stage) as a bundle in ``out``; returns the manifest.

    The checkpoint's stored config says where the data was (``data_path`` says where it is now): the
    dataset is rebuilt with ``load_data_and_model`` for its item token map and feature stores. The written
    bundle is loaded back and must reproduce the checkpoint model's full-sort scores, else it is removed and
    the error says so (a family whose serving protocol is incomplete)."""
    from recbole_missrec.quick_start import load_data_and_model
    from recbole_missrec.trainer import load_state, plain_config
    from recbole_missrec.utils import get_model, is_plugin_model, stage_kind

    stored = load_state(checkpoint).get("config") or {}
    model_class = get_model(stored["model"]) if "model" in stored else None
    if model_class is None or not is_plugin_model(model_class):
        raise BundleError(f"{checkpoint}: export takes a checkpoint of one of the plugin's content models (a model "
                          f"with train stages and item features), trained by the plugin")
    if stage_kind(model_class, stored.get("train_stage")) == "pretrain":
        raise BundleError(f"{checkpoint} is a pre-training checkpoint: fine-tune it on the target dataset first "
                          f"(--pretrained=CKPT with a fine-tuning train_stage) and export that checkpoint")
    config, model, dataset, _, _, _ = load_data_and_model(checkpoint, data_path, {"use_gpu": False})
    source = {"checkpoint": os.path.abspath(checkpoint), "dataset": config["dataset"], "data_path": config["data_path"],
              "feature_files": dict(dataset.feature_files)}
    normalisation = {"mode": config["feature_norm"] or "none", "divisors": dict(dataset.feature_divisors),
                     "scale": float(config["feature_scale"])}
    manifest = write_bundle(out, plain_config(config), model.state_dict(), dataset.field2id_token[dataset.iid_field],
                            dataset.item_features, normalisation, source)
    _check_export(out, model)
    return manifest


def _check_export(out, model):
    """The bundle's model, through the serving protocol (``forward``, ``score``, ``history_offset``), must
    score like the checkpoint model's ``full_sort_predict`` on a few histories of the first items; else the
    bundle is removed and the error says which."""
    import torch
    from recbole.data.interaction import Interaction

    from recbole_missrec.serving.recommender import Recommender, adjust_history, history_offset

    def fail(reason):
        shutil.rmtree(out, ignore_errors=True)
        raise BundleError(f"the bundle written to {out} was removed: {reason} (the serving protocol: "
                          f"recbole_missrec/serving/__init__.py)")

    served = Recommender.load(out).model
    length = min(model.max_seq_length, model.n_items - 1, 5)
    seq = torch.zeros(4, model.max_seq_length, dtype=torch.long)
    seq[:, :length] = (torch.arange(length) + torch.arange(4).unsqueeze(1)) % (model.n_items - 1) + 1
    lengths = torch.full((4,), length)
    with torch.no_grad():
        expected = model.full_sort_predict(Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths}))
        try:
            candidates = torch.arange(1, served.n_items)
            got = adjust_history(served.score(served(seq[:, :length], lengths), candidates), candidates,
                                 seq[:, :length], history_offset(served))
        except AttributeError as error:
            fail(f"{type(model).__name__} does not implement the serving protocol ({error})")
    if got.shape != expected[:, 1:].shape or not torch.allclose(got, expected[:, 1:], atol=1e-5):
        fail(f"{type(model).__name__}'s forward + score do not reproduce the checkpoint's full_sort_predict")


# ---- reading -------------------------------------------------------------------------------------------
def read_manifest(folder):
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise BundleError(f"{path} not found: {folder} is not a serving bundle (write one with "
                          f"`python -m recbole_missrec export --checkpoint CKPT --out DIR`)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise BundleError(f"{path} is not readable JSON ({error}); the bundle is damaged: re-export it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{path}: bundle format version {manifest.get('version')}, this plugin reads {VERSION}")
    return manifest


def _checked_path(folder, manifest, role, verify):
    entry = manifest["files"].get(role)
    if entry is None:
        raise BundleError(f"{os.path.join(folder, MANIFEST)} lists no {role!r} file; the bundle is damaged")
    path = os.path.join(folder, entry["path"])
    if not os.path.isfile(path):
        raise BundleError(f"{path} is missing from the bundle (the manifest lists it as its {role}); re-export it")
    if verify and sha256_file(path) != entry["sha256"]:
        raise BundleError(f"{path}: sha256 differs from the manifest's: the file was changed or damaged; re-export "
                          f"the bundle")
    return path


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except ValueError as error:
        raise BundleError(f"{path} is not readable JSON ({error})") from None


def _read_weights(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{path} is not a readable safetensors file ({error})") from None


def _read_store(path, rows):
    import torch

    from recbole_missrec.data.feature_store import FeatureStore

    try:
        with np.load(path, allow_pickle=False) as data:
            table, slot_mask, present = (data[key] for key in STORE_KEYS)
    except (OSError, ValueError, KeyError) as error:
        raise BundleError(f"{path} is not a readable feature store ({type(error).__name__}: {error})") from None
    shapes_fit = (table.ndim == 3 and table.dtype == np.float32 and slot_mask.shape == table.shape[:2]
                  and present.shape == (table.shape[0],) and slot_mask.dtype == bool and present.dtype == bool)
    if not shapes_fit or table.shape[0] != rows:
        raise BundleError(f"{path}: table {table.shape} {table.dtype}, slot_mask {slot_mask.shape}, present "
                          f"{present.shape}; expected [{rows}, S, D] float32 and bool masks for the bundle's "
                          f"{rows} items")
    return FeatureStore(torch.from_numpy(table), torch.from_numpy(slot_mask), torch.from_numpy(present))


def read_bundle(folder, verify=True):
    """The bundle in ``folder``; ``verify`` checks every file's sha256 against the manifest first."""
    folder = os.path.abspath(folder)
    manifest = read_manifest(folder)
    paths = {role: _checked_path(folder, manifest, role, verify) for role in manifest["files"]}
    tokens = _read_json(paths["items"])
    if not isinstance(tokens, list) or len(tokens) != manifest["item_rows"]:
        raise BundleError(f"{paths['items']}: expected a list of {manifest['item_rows']} item tokens")
    stores = {name: _read_store(paths[f"features.{name}"], len(tokens)) for name in manifest["stores"]}
    return Bundle(folder, manifest, _read_json(paths["config"]), _read_weights(paths["weights"]), tokens, stores)


# ---- updating ------------------------------------------------------------------------------------------
@contextmanager
def bundle_lock(folder):
    """One writer at a time (an advisory lock on ``<folder>/.lock``); readers need none."""
    with open(os.path.join(folder, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_items(bundle, tokens, stores, added):
    """Commit a grown item set to ``bundle.folder``: new item and feature files, then the manifest (the
    commit), then the files no longer named are removed. ``added``: a record of this addition for the
    manifest. Refuses if another writer changed the bundle since ``bundle`` was read. Returns the manifest."""
    folder = bundle.folder
    with bundle_lock(folder):
        if read_manifest(folder) != bundle.manifest:
            raise BundleError(f"{os.path.join(folder, MANIFEST)} changed since this bundle was loaded (another "
                              f"writer): load it again and repeat the addition")
        files = dict(bundle.manifest["files"], **_publish_items(folder, tokens, stores))
        manifest = dict(bundle.manifest, item_rows=len(tokens), files=files, added=bundle.manifest["added"] + [added])
        atomic_write_json(os.path.join(folder, MANIFEST), manifest, indent=1)
        _fsync_folder(folder)
        named = {entry["path"] for entry in files.values()}
        for name in os.listdir(folder):
            stale_temporary = name.endswith(".tmp") and name.startswith((".", f"{MANIFEST}."))
            if stale_temporary or (BUNDLE_FILE.match(name) and name not in named):
                os.remove(os.path.join(folder, name))
    return manifest
