"""Atomic writes to local files and fsspec URLs.

Guarantees of :func:`atomic_write` (and :func:`atomic_save_bytes`):

**Local files** (plain paths and ``file://`` URLs). The data is written to a temporary file
``.<name>.tmp-<uuid>`` in the destination's directory (same file system), flushed and
``fsync``-ed, then moved onto the destination with :func:`os.replace` (an atomic rename on
POSIX and Windows), and finally the directory itself is ``fsync``-ed so that the rename survives
a power loss. Therefore:

* a reader sees either the complete old file or the complete new file, never a mix or a
  truncated file, whatever happens to the writer;
* if the body of the ``with`` block raises, the temporary file is removed and the destination
  is left untouched (or absent if it did not exist);
* if the writing process is killed (``SIGKILL``, power loss) before the rename, the destination
  is untouched; a stale ``.<name>.tmp-<uuid>`` file may be left behind in that case only.

The new file gets the usual permissions of a newly created file (``0o666`` minus the umask).
Missing parent directories are created.

**Remote fsspec URLs** (``s3://``, ``gs://``, ``memory://``, ...). The data is written to
``<dest>.tmp-<uuid>`` and then moved onto ``<dest>`` with ``fs.mv``. On object stores an object
only becomes visible once its upload completes, and the move (a server-side copy) replaces the
destination object in one step, so readers never see a partial object and a failed write never
replaces the old object. On failure the temporary object is removed (best effort). If the process
is killed, a stale ``<dest>.tmp-<uuid>`` object may remain (an S3 lifecycle rule can expire them).
Concurrent writers to the same destination: the last completed move wins.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

from xfm.core.checkpoint.storage import PathOrUrl, is_local, local_path, resolve

__all__ = ["atomic_save_bytes", "atomic_write"]

_MODES = ("wb", "w")


def _fsync_dir(directory: str) -> None:
    """Persist a rename in ``directory`` (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_write_local(dest: str, mode: str) -> Iterator[IO[Any]]:
    dest = os.path.abspath(dest)
    if os.path.isdir(dest):
        raise IsADirectoryError(f"cannot write {dest!r}: it is a directory")
    directory = os.path.dirname(dest)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(dest)}.tmp-{uuid.uuid4().hex}")
    # 0o666 lets the umask decide the final permissions, as for any newly created file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    f: IO[Any] = os.fdopen(fd, "w", encoding="utf-8") if mode == "w" else os.fdopen(fd, "wb")
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def _atomic_write_remote(
    url: str, mode: str, storage_options: Mapping[str, Any] | None
) -> Iterator[IO[Any]]:
    fs, dest = resolve(url, storage_options)
    tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
    f = fs.open(tmp, mode, encoding="utf-8") if mode == "w" else fs.open(tmp, mode)
    try:
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            raise
        f.close()
        fs.mv(tmp, dest)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise
    with contextlib.suppress(Exception):
        fs.invalidate_cache(dest)


@contextlib.contextmanager
def atomic_write(
    path_or_url: PathOrUrl,
    mode: str = "wb",
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[IO[Any]]:
    """Open ``path_or_url`` for writing so that the destination is replaced all at once.

    Use as ``with atomic_write("ckpt.pt") as f: torch.save(obj, f)``. See the module docstring
    for the exact guarantees on local files and on remote fsspec URLs.

    Args:
        path_or_url: destination, a local path or an fsspec URL.
        mode: ``"wb"`` (binary, default) or ``"w"`` (text, UTF-8).
        storage_options: passed to the fsspec filesystem for remote URLs.

    Raises:
        ValueError: for another ``mode``.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write mode must be one of {_MODES}, got {mode!r}")
    if is_local(path_or_url):
        with _atomic_write_local(local_path(path_or_url), mode) as f:
            yield f
    else:
        with _atomic_write_remote(os.fspath(path_or_url), mode, storage_options) as f:
            yield f


def atomic_save_bytes(
    data: bytes | bytearray | memoryview,
    path_or_url: PathOrUrl,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``data`` to ``path_or_url`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path_or_url, "wb", storage_options=storage_options) as f:
        f.write(data)
