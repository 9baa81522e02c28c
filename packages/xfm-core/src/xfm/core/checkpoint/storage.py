"""Resolve local paths and fsspec URLs, and open files on either with clear errors.

A *location* is a local path (``str`` or :class:`os.PathLike`) or any fsspec URL (``s3://``,
``gs://``, ``memory://``, ``file://``, chained URLs such as ``simplecache::s3://...``).
``file://`` URLs and plain paths are treated as local files, so that local-only guarantees
(``fsync``, ``os.replace``) apply to them.

``storage_options`` are passed to the fsspec filesystem constructor (for s3fs for example
``{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}``). For ``s3://`` URLs, when
no endpoint is given in ``storage_options``, the environment variable ``S3_ENDPOINT_URL`` (if set)
is used as the endpoint, which makes S3-compatible stores (MinIO, moto, Ceph, R2) usable
without code changes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import IO, Any

import fsspec
from fsspec.core import split_protocol
from fsspec.spec import AbstractFileSystem

__all__ = [
    "PathOrUrl",
    "is_local",
    "local_path",
    "open_file",
    "read_bytes",
    "resolve",
]

PathOrUrl = str | os.PathLike[str]

_LOCAL_PROTOCOLS = (None, "file", "local")
_S3_PROTOCOLS = ("s3", "s3a")


def _as_str(path_or_url: PathOrUrl) -> str:
    if isinstance(path_or_url, os.PathLike):
        return os.fspath(path_or_url)
    if isinstance(path_or_url, str):
        return path_or_url
    raise TypeError(
        f"expected a local path or an fsspec URL (str or os.PathLike), got "
        f"{type(path_or_url).__name__}: {path_or_url!r}"
    )


def is_local(path_or_url: PathOrUrl) -> bool:
    """Whether ``path_or_url`` names a file on the local file system (plain path or ``file://``)."""
    s = _as_str(path_or_url)
    if "::" in s:
        return False
    protocol, _ = split_protocol(s)
    return protocol in _LOCAL_PROTOCOLS


def local_path(path_or_url: PathOrUrl) -> str:
    """The local file-system path of a plain path or ``file://`` URL (``~`` expanded)."""
    s = _as_str(path_or_url)
    protocol, path = split_protocol(s)
    if protocol not in _LOCAL_PROTOCOLS:
        raise ValueError(f"not a local path: {s!r}")
    return os.path.expanduser(path)


def _with_env_endpoint(protocol: str | None, options: dict[str, Any]) -> dict[str, Any]:
    if protocol not in _S3_PROTOCOLS:
        return options
    endpoint = os.environ.get("S3_ENDPOINT_URL")
    client_kwargs = options.get("client_kwargs") or {}
    if endpoint and "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
        options = {**options, "endpoint_url": endpoint}
    return options


def resolve(
    path_or_url: PathOrUrl, storage_options: Mapping[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Return the fsspec filesystem and the path inside it for a location.

    ``S3_ENDPOINT_URL`` is honoured for ``s3://`` URLs when ``storage_options`` gives no endpoint.
    """
    s = _as_str(path_or_url)
    protocol = None if "::" in s else split_protocol(s)[0]
    options = _with_env_endpoint(protocol, dict(storage_options or {}))
    fs, path = fsspec.core.url_to_fs(s, **options)
    return fs, path


@contextlib.contextmanager
def open_file(
    path_or_url: PathOrUrl,
    mode: str = "rb",
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[IO[Any]]:
    """Open a local file or fsspec URL for reading.

    Raises:
        FileNotFoundError: naming the location when it does not exist.
    """
    if mode not in ("rb", "r"):
        raise ValueError(f"open_file is for reading: mode must be 'rb' or 'r', got {mode!r}")
    s = _as_str(path_or_url)
    encoding = "utf-8" if mode == "r" else None
    if is_local(s):
        path = local_path(s)
        if not os.path.isfile(path):
            what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
            raise FileNotFoundError(f"{s!r} {what}")
        with open(path, mode, encoding=encoding) as f:
            yield f
        return
    fs, path = resolve(s, storage_options)
    try:
        f = fs.open(path, mode, encoding=encoding) if encoding else fs.open(path, mode)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{s!r} does not exist ({type(fs).__name__})") from e
    with f:
        yield f


def read_bytes(
    path_or_url: PathOrUrl, *, storage_options: Mapping[str, Any] | None = None
) -> bytes:
    """Read the whole content of a local file or fsspec URL.

    Raises:
        FileNotFoundError: naming the location when it does not exist.
    """
    with open_file(path_or_url, "rb", storage_options=storage_options) as f:
        return f.read()
