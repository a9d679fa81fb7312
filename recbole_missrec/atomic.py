"""Atomic file writes shared by the plugin and ``dataset_preprocess``.

Feature tables, checkpoints, manifests and downloaded images are all written through a temporary file in
the target's folder that is renamed into place, so a crash or a full disk never leaves a half-written file
where a finished one (or an older good one) was.
"""
import contextlib
import json
import os
import tempfile


def publish_mode(path):
    """Give a temporary file (``mkstemp`` makes it owner-only) the permissions of a normally created one."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        publish_mode(tmp)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="wb", **open_kwargs):
    """``open(path, mode)`` whose content appears at ``path`` only once it is complete and synced."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_json(path, data, **dump_kwargs):
    """``json.dump(data)`` through :func:`atomic_open`: a reader never sees half a record or report."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, **dump_kwargs)
        handle.write("\n")
