"""Training checkpoints: model, optimizer, scheduler, scaler, RNG and data-loader state.

A checkpoint directory (local, ``s3://``, ``gs://``) holds, per saved step:

* ``step_XXXXXXXX.pt``: the training state, written with ``torch.save`` from tensors and plain
  Python values only, so that it loads with ``torch.load(weights_only=True)``: reading a
  checkpoint never runs code from it (:func:`xfm.core.checkpoint.load_torch_object` is the one
  loader of torch files);
* ``step_XXXXXXXX.json``: its *manifest*, the sha256 digest and size of the ``.pt`` bytes,
  written right after it. A separate manifest (rather than a digest embedded in the file) is
  written only once the data is complete, so its presence also proves the save finished; it is
  checked before the bytes are ever unpickled, works unchanged on object stores, and can be
  read by people and tools (``sha256sum``);

and ``latest``, naming the newest ``step_XXXXXXXX.pt`` (only such a name in the same folder is
accepted). Every file is written atomically (a failed or killed save never replaces a good one)
in the order ``.pt``, ``.json``, ``latest``. Stale temporary files left by a killed save are
removed by the next save or prune, so the folder needs room for ``keep + 1`` checkpoints.

Resuming (:func:`latest_checkpoint`) verifies the digest of the newest checkpoint and falls back
to the previous good one, with a warning naming both, when it is corrupt or truncated.

Remote reads and writes are retried on transient errors with exponential backoff
(:class:`RetryPolicy`, tenacity). s3fs/gcsfs and botocore retry single requests for a second or
two, which does not cover an outage of several seconds; the retry here wraps whole operations.
A save that still fails is written to a local fallback folder that the error names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import os
import random
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from xfm.core.checkpoint import (
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointSaveError,
    atomic_save_bytes,
    is_local,
    load_torch_object,
    open_file,
    read_bytes,
    save_state_dict,
)
from xfm.core.checkpoint.storage import local_path, resolve

__all__ = [
    "MANIFEST_FORMAT",
    "TRAIN_STATE_FORMAT",
    "RetryPolicy",
    "capture_rng",
    "check_compatible",
    "check_writable",
    "checkpoint_name",
    "export_weights",
    "join_url",
    "latest_checkpoint",
    "load_training_state",
    "manifest_url",
    "prune_checkpoints",
    "remove_stale_temp_files",
    "restore_rng",
    "save_training_state",
    "verify_checkpoint",
]

log = logging.getLogger("xfm.train")

TRAIN_STATE_FORMAT = "xfm-train-state/2"
MANIFEST_FORMAT = "xfm-checkpoint-manifest/1"

#: The only names ``latest`` may hold: a step checkpoint in the same folder.
_STEP_NAME = re.compile(r"step_(\d{8})\.pt")
#: Temporary files of the atomic writer for the files of a checkpoint folder (local:
#: ``.<name>.tmp-<hex>``, object stores: ``<name>.tmp-<hex>``).
_TEMP_NAME = re.compile(
    r"\.?(?:step_\d{8}\.(?:pt|json)|latest|model\.safetensors|\.xfm-write-probe-[0-9a-f]+)"
    r"\.tmp-[0-9a-f]{32}"
)
_CHUNK = 8 << 20

T = TypeVar("T")


# ------------------------------------------------------------------------------ names


def join_url(base: str, name: str) -> str:
    """``base/name`` for local paths and URLs."""
    return base.rstrip("/") + "/" + name


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:08d}.pt"


def manifest_url(url: str) -> str:
    """The manifest next to checkpoint ``url``: ``step_X.pt`` -> ``step_X.json``."""
    return (url[:-3] if url.endswith(".pt") else url) + ".json"


def _split(url: str) -> tuple[str, str]:
    head, _, name = url.rstrip("/").rpartition("/")
    return head, name


# ------------------------------------------------------------------------------ retries


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How remote (``s3://``, ``gs://``...) checkpoint reads and writes are retried.

    Transient errors (connection refused or reset, timeouts, throttling) are retried with
    exponential backoff: ``initial_delay_s``, then doubled each time up to ``max_delay_s``.
    Errors that retrying cannot fix (missing file or bucket, permission denied) are not.
    The defaults come from ``XFM_IO_RETRIES`` (attempts, default 6) and
    ``XFM_IO_RETRY_DELAY_S`` (first delay, default 1 s): about 30 s of outage survived.

    Attributes:
        attempts: tries in total (1 = no retry).
        initial_delay_s: wait after the first failure.
        max_delay_s: cap of one wait.
    """

    attempts: int = 6
    initial_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.initial_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The policy from ``XFM_IO_RETRIES`` / ``XFM_IO_RETRY_DELAY_S`` (else the defaults)."""
        try:
            attempts = int(os.environ.get("XFM_IO_RETRIES", cls.attempts))
            delay = float(os.environ.get("XFM_IO_RETRY_DELAY_S", cls.initial_delay_s))
        except ValueError as err:
            raise ValueError(f"XFM_IO_RETRIES / XFM_IO_RETRY_DELAY_S: {err}") from err
        return cls(attempts=attempts, initial_delay_s=delay)


_PERMANENT = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    CheckpointError,
)
_TRANSIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google")


def is_transient(exc: BaseException) -> bool:
    """Whether retrying might fix ``exc`` (network and server-side errors, not missing files)."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    name = type(exc).__name__
    if "NoSuchBucket" in name or "AccessDenied" in name or "Credentials" in name:
        return False
    return any(
        c.__module__.split(".")[0] in _TRANSIENT_MODULES or c.__module__.startswith("fsspec")
        for c in type(exc).__mro__
    )


def _with_retry(fn: Callable[[], T], url: str, what: str, policy: RetryPolicy | None) -> T:
    """``fn()``; for a remote ``url`` retried on transient errors per ``policy``."""
    if is_local(url):
        return fn()
    policy = policy or RetryPolicy.from_env()

    def _log(state: Any) -> None:
        err = state.outcome.exception()
        log.warning(
            "%s %s failed (attempt %d of %d: %s: %s); retrying in %.1fs",
            what,
            url,
            state.attempt_number,
            policy.attempts,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
            state.next_action.sleep if state.next_action else 0.0,
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.initial_delay_s, max=policy.max_delay_s),
        retry=retry_if_exception(is_transient),
        before_sleep=_log,
        reraise=True,
    )
    return retrying(fn)


def _invalidate(url: str) -> None:
    if not is_local(url):
        with contextlib.suppress(Exception):
            fs, path = resolve(url)
            fs.invalidate_cache(_split(path)[0])


def _read(url: str, policy: RetryPolicy | None) -> bytes:
    def go() -> bytes:
        _invalidate(url)
        return read_bytes(url)

    return _with_retry(go, url, "reading", policy)


# ------------------------------------------------------------------------------ RNG


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) RNG states, and ``generator``'s.

    Only tensors and plain values (Python's state is a tuple of ints; NumPy's key is stored
    as an int64 tensor), so that a checkpoint holding it loads with ``weights_only=True``.
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def _numpy_state(saved: Any) -> Any:
    if isinstance(saved, dict):
        keys = saved["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        return (
            saved["bit_generator"],
            keys.astype(np.uint32),
            int(saved["pos"]),
            int(saved["has_gauss"]),
            float(saved["gauss"]),
        )
    return saved  # the legacy tuple (a state captured in this process)


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ------------------------------------------------------------------------------ save


_PLAIN = (str, bytes, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device)


def _to_plain(obj: Any, where: str) -> Any:
    """``obj`` with NumPy values converted to Python/tensors; TypeError for anything that
    ``torch.load(weights_only=True)`` would refuse (so that the save fails, not the resume)."""
    if isinstance(obj, np.generic):  # before _PLAIN: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, torch.Size) or type(obj) in _PLAIN or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, dict):
        items = ((k, _to_plain(v, f"{where}.{k}")) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(
        f"training state entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}: "
        f"only tensors and plain Python values (dict, list, tuple, str, int, float, bool, None) "
        f"can be saved, so that checkpoints load with torch.load(weights_only=True)"
    )


def _fallback_dir(directory: str, fallback_dir: str | None) -> str:
    if fallback_dir is not None:
        return fallback_dir
    base = os.environ.get("XFM_CHECKPOINT_FALLBACK") or str(Path.cwd() / "xfm-fallback")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", directory.split("://", 1)[-1]).strip("_")[-120:]
    return str(Path(base) / (name or "checkpoints"))


def _write_files(files: list[tuple[str, bytes]], policy: RetryPolicy | None) -> None:
    for url, data in files:
        _with_retry(lambda u=url, d=data: atomic_save_bytes(d, u), url, "writing", policy)


def _save_with_fallback(
    files: list[tuple[str, bytes]],
    directory: str,
    what: str,
    retry: RetryPolicy | None,
    fallback_dir: str | None,
) -> None:
    """Write ``files`` (``(url, bytes)`` in order); when a remote destination fails (after the
    retries of transient errors, or at once for others: expired credentials, a deleted
    bucket), write them into a local fallback folder and raise :class:`CheckpointSaveError`."""
    try:
        _write_files(files, retry)
        return
    except Exception as err:
        if is_local(directory):
            raise
        failed = err
    local = _fallback_dir(directory, fallback_dir)
    attempts = (retry or RetryPolicy.from_env()).attempts if is_transient(failed) else 1
    main_url = files[0][0]
    fallback_url = join_url(local, _split(main_url)[1])
    try:
        _write_files([(join_url(local, _split(u)[1]), d) for u, d in files], retry)
    except Exception as err2:
        raise CheckpointSaveError(
            f"could not write {what} {main_url!r} ({attempts} attempt(s), "
            f"{type(failed).__name__}: {failed}), nor the local fallback {fallback_url!r} "
            f"({type(err2).__name__}: {err2})",
            main_url,
        ) from failed
    raise CheckpointSaveError(
        f"could not write {what} {main_url!r} ({attempts} attempt(s), "
        f"{type(failed).__name__}: {failed}); it was saved locally instead, to "
        f"{fallback_url!r}"
        + (f" (resume with --resume {fallback_url})" if "step_" in what else ""),
        main_url,
        fallback_url,
    ) from failed


def save_training_state(
    state: dict[str, Any],
    directory: str,
    step: int,
    *,
    retry: RetryPolicy | None = None,
    fallback_dir: str | None = None,
) -> str:
    """Write ``state`` as ``directory/step_XXXXXXXX.pt`` with its manifest, then ``latest``.

    Each write is atomic; stale temporary files of earlier killed saves are removed first.
    Remote writes are retried (``retry``, default :meth:`RetryPolicy.from_env`).

    Args:
        state: tensors and plain Python values only (NumPy values are converted).
        directory: local folder or ``s3://`` / ``gs://`` URL.
        step: optimizer steps done.
        retry: retry policy of remote writes.
        fallback_dir: local folder for the state when a remote save fails for good (default
            ``$XFM_CHECKPOINT_FALLBACK`` or ``./xfm-fallback``, plus the URL as a folder name).

    Returns:
        The checkpoint URL.

    Raises:
        TypeError: for a state entry that would not load with ``weights_only=True``.
        CheckpointSaveError: a remote save failed after the retries; ``fallback_url`` names the
            local copy.
    """
    plain = _to_plain({"format": TRAIN_STATE_FORMAT, **state}, "state")
    buf = io.BytesIO()
    torch.save(plain, buf)
    data = buf.getvalue()
    name = checkpoint_name(step)
    url = join_url(directory, name)
    manifest = {
        "format": MANIFEST_FORMAT,
        "checkpoint": name,
        "step": int(step),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    remove_stale_temp_files(directory)
    _save_with_fallback(
        [
            (url, data),
            (manifest_url(url), (json.dumps(manifest, indent=1) + "\n").encode()),
            (join_url(directory, "latest"), name.encode()),
        ],
        directory,
        f"checkpoint {name}",
        retry,
        fallback_dir,
    )
    return url


def export_weights(
    model_state: dict[str, torch.Tensor],
    url: str,
    config: dict,
    *,
    retry: RetryPolicy | None = None,
    fallback_dir: str | None = None,
) -> None:
    """Write the model weights as safetensors with the model config in the metadata.

    Remote writes are retried; when they fail for good the file is written to a local
    fallback folder and :class:`CheckpointSaveError` names it (see :func:`save_training_state`).
    """
    if is_local(url):
        save_state_dict(model_state, url, metadata={"xfm_model_config": json.dumps(config)})
        return
    import safetensors.torch

    from xfm.core.checkpoint.io import _untie_for_safetensors

    data = safetensors.torch.save(
        _untie_for_safetensors(model_state), metadata={"xfm_model_config": json.dumps(config)}
    )
    _save_with_fallback([(url, data)], _split(url)[0], "model weights", retry, fallback_dir)


# ------------------------------------------------------------------------------ check


def check_writable(url: str, *, retry: RetryPolicy | None = None) -> None:
    """Check that checkpoint folder ``url`` exists or can be created and is writable.

    Writes and deletes a small probe file (``.xfm-write-probe-<hex>``); call it at start-up,
    on the rank that saves, before training, so that a wrong bucket or missing permission
    is reported before hours of training rather than at the first save.

    Raises:
        CheckpointError: naming ``url`` and the reason (no such bucket, permission denied,
            unreachable after the retries...).
    """
    probe = join_url(url, f".xfm-write-probe-{uuid.uuid4().hex}")
    try:
        _with_retry(lambda: atomic_save_bytes(b"xfm", probe), probe, "writing", retry)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        if isinstance(err, FileNotFoundError) and not is_local(url):
            reason = f"the bucket does not exist or cannot be listed ({reason})"
        raise CheckpointError(
            f"checkpoint folder {url!r} is not writable: {reason}. Fix checkpoint.dir (or "
            f"run_dir) or the storage credentials before training."
        ) from err
    with contextlib.suppress(Exception):
        if is_local(probe):
            os.unlink(local_path(probe))
        else:
            fs, path = resolve(probe)
            fs.rm(path)


# ------------------------------------------------------------------------------ load


def _read_manifest(url: str, policy: RetryPolicy | None) -> dict[str, Any]:
    murl = manifest_url(url)
    try:
        raw = _read(murl, policy)
    except FileNotFoundError as err:
        raise CheckpointIntegrityError(
            f"checkpoint {url!r} has no manifest {murl!r} with its digest: its save did not "
            f"complete (or it was written by an xfm without digests)"
        ) from err
    try:
        manifest = json.loads(raw.decode("utf-8"))
        ok = (
            isinstance(manifest, dict)
            and manifest.get("format") == MANIFEST_FORMAT
            and isinstance(manifest.get("sha256"), str)
            and isinstance(manifest.get("size"), int)
        )
    except (UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise CheckpointIntegrityError(f"the manifest {murl!r} of checkpoint {url!r} is corrupt")
    if manifest.get("checkpoint") not in (None, _split(url)[1]):
        raise CheckpointIntegrityError(
            f"the manifest {murl!r} describes {manifest['checkpoint']!r}, not {_split(url)[1]!r}"
        )
    return manifest


def _compare(url: str, manifest: dict[str, Any], size: int, digest: str) -> None:
    if size != manifest["size"]:
        raise CheckpointIntegrityError(
            f"checkpoint {url!r} is corrupt or truncated: {size} bytes, its manifest records "
            f"{manifest['size']}"
        )
    if digest != manifest["sha256"]:
        raise CheckpointIntegrityError(
            f"checkpoint {url!r} is corrupt: its sha256 is {digest[:16]}..., its manifest "
            f"records {manifest['sha256'][:16]}..."
        )


def verify_checkpoint(url: str, *, retry: RetryPolicy | None = None) -> None:
    """Check checkpoint ``url`` against its manifest (size and sha256), reading it in chunks.

    Raises:
        FileNotFoundError: no such checkpoint.
        CheckpointIntegrityError: no or corrupt manifest, wrong size or digest.
    """
    manifest = _read_manifest(url, retry)

    def digest() -> tuple[int, str]:
        _invalidate(url)
        h, n = hashlib.sha256(), 0
        with open_file(url) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
        return n, h.hexdigest()

    size, hexdigest = _with_retry(digest, url, "reading", retry)
    _compare(url, manifest, size, hexdigest)


def _list_names(directory: str) -> list[str]:
    if is_local(directory):
        path = local_path(directory)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, path = resolve(directory)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def latest_checkpoint(
    directory: str, *, verify: bool = True, retry: RetryPolicy | None = None
) -> str | None:
    """URL of the newest good checkpoint in ``directory`` (from ``latest``), or None.

    ``latest`` must name a ``step_XXXXXXXX.pt`` of the same folder (anything else, such as a
    path, is refused). With ``verify``, the checkpoint's digest is checked; when it is corrupt,
    truncated or has no manifest, the older checkpoints of the folder are tried newest first,
    and the first good one is returned with a warning naming both.

    Returns:
        None when the folder has no ``latest`` file.

    Raises:
        CheckpointError: ``latest`` is empty or names something else; or no checkpoint of the
            folder passes the check (the message lists each with its problem).
    """
    latest = join_url(directory, "latest")
    try:
        name = _read(latest, retry).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    if not name:
        raise CheckpointError(f"{latest} is empty: the directory is corrupt")
    if not _STEP_NAME.fullmatch(name):
        raise CheckpointError(
            f"{latest} names {name[:200]!r}, but it may only name a step_XXXXXXXX.pt checkpoint "
            f"in the same folder; refusing to load it (the folder was altered)"
        )
    url = join_url(directory, name)
    if not verify:
        return url
    older = sorted(
        (n for n in _list_names(directory) if _STEP_NAME.fullmatch(n) and n < name), reverse=True
    )
    problems: list[str] = []
    for candidate in [name, *older]:
        cand_url = join_url(directory, candidate)
        try:
            verify_checkpoint(cand_url, retry=retry)
        except (CheckpointIntegrityError, FileNotFoundError) as err:
            problems.append(str(err))
            continue
        if candidate != name:
            log.warning(
                "the newest checkpoint %s is unusable (%s); resuming from the previous good "
                "one, %s",
                url,
                problems[0],
                cand_url,
            )
        return cand_url
    raise CheckpointError(f"no usable checkpoint in {directory!r}:\n  " + "\n  ".join(problems))


def load_training_state(
    url: str, *, verify: bool = True, retry: RetryPolicy | None = None
) -> dict[str, Any]:
    """Read a training checkpoint; clear errors for missing, corrupt, unsafe or foreign files.

    The bytes are checked against the manifest (``verify``) before they are unpickled, and
    unpickled with ``torch.load(weights_only=True)`` only (no code from the file ever runs).

    Raises:
        FileNotFoundError: no such checkpoint.
        CheckpointIntegrityError: digest mismatch, truncation, or no manifest.
        CheckpointError: not a torch file, refused objects, wrong format or missing entries.
    """
    try:
        data = _read(url, retry)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"training checkpoint {url!r} does not exist") from err
    if verify:
        manifest = _read_manifest(url, retry)
        _compare(url, manifest, len(data), hashlib.sha256(data).hexdigest())
    state = load_torch_object(data, map_location="cpu", source=f"training checkpoint {url!r}")
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{url!r} is not an xfm training checkpoint (format {got!r}, expected "
            f"{TRAIN_STATE_FORMAT!r})"
        )
    missing = [
        k
        for k in ("model", "optimizer", "scheduler", "step", "rng", "loader", "config")
        if k not in state
    ]
    if missing:
        raise CheckpointError(f"training checkpoint {url!r} lacks {missing}")
    return state


# ------------------------------------------------------------------------------ compatibility


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a:
                out.append(f"{key}: not in the checkpoint, {b[k]!r} now")
            elif k not in b:
                out.append(f"{key}: {a[k]!r} in the checkpoint, absent now")
            else:
                out.extend(_diff(a[k], b[k], key))
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        a, b = list(a), list(b)
    return [] if a == b else [f"{prefix}: {a!r} in the checkpoint, {b!r} now"]


#: Config sections that must match for an exact resume (except :data:`RESUME_CHANGEABLE`).
RESUME_KEYS = ("model", "seed", "precision", "optim", "data")

#: Settings of :data:`RESUME_KEYS` that ``--resume`` may change on purpose: pure optimizer
#: hyper-parameters (the resumed optimizer and schedule take the new values: see
#: :meth:`xfm.train.engine.state.Checkpoints.resume`) and the non-finite policy. Everything
#: else of those sections (the model, the data, ``accumulate``, the parameter groups, the
#: schedule's shape) changes what a step computes and is refused. Sections outside
#: ``RESUME_KEYS`` (``steps``, ``checkpoint.*``, ``eval.*``, ``log.*``) may always change.
RESUME_CHANGEABLE = frozenset(
    {
        "optim.lr",
        "optim.weight_decay",
        "optim.betas",
        "optim.eps",
        "optim.grad_clip",
        "optim.on_nonfinite",
    }
)


def check_compatible(saved: dict[str, Any], current: dict[str, Any], url: str) -> None:
    """Raise :class:`CheckpointError` listing every setting that differs from the checkpoint
    (in :data:`RESUME_KEYS`, except the intended changes of :data:`RESUME_CHANGEABLE`)."""
    diffs: list[str] = []
    for key in RESUME_KEYS:
        diffs.extend(_diff(saved.get(key), current.get(key), key))
    diffs = [d for d in diffs if d.split(":", 1)[0] not in RESUME_CHANGEABLE]
    if diffs:
        raise CheckpointError(
            f"cannot resume from {url!r}: the config does not match the one it was trained "
            f"with:\n  " + "\n  ".join(diffs[:20]) + ("\n  ..." if len(diffs) > 20 else "")
        )


# ------------------------------------------------------------------------------ pruning


def _remove(directory: str, names: list[str]) -> None:
    if not names:
        return
    if is_local(directory):
        base = local_path(directory)
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(base, n))
        return
    fs, path = resolve(directory)
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path.rstrip("/") + "/" + n)


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete temporary files left in checkpoint folder ``directory`` by killed saves.

    Only the names the atomic writer gives to the files of a checkpoint folder
    (``.step_XXXXXXXX.pt.tmp-<hex>``, ``step_XXXXXXXX.json.tmp-<hex>``, ``latest``...) are
    touched. Call it only from the process that saves (it removes in-progress files too).
    Best effort: returns the names removed.
    """
    try:
        stale = [n for n in _list_names(directory) if _TEMP_NAME.fullmatch(n)]
        _remove(directory, stale)
    except Exception as err:  # never fail a save because of housekeeping
        log.debug("could not clean temporary files in %s: %s", directory, err)
        return []
    return stale


def prune_checkpoints(directory: str, keep: int, current_step: int) -> None:
    """Delete step checkpoints (and manifests) older than the newest ``keep`` (never the
    current one), and stale temporary files of killed saves."""
    remove_stale_temp_files(directory)
    if keep <= 0:
        return
    names = _list_names(directory)
    steps = sorted(n for n in names if _STEP_NAME.fullmatch(n))
    current = checkpoint_name(current_step)
    doomed = [n for n in steps[:-keep] if n != current]
    present = set(names)
    _remove(
        directory,
        [x for n in doomed for x in (n, n[:-3] + ".json") if x in present],
    )
