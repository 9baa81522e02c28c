"""Training checkpoints: model, optimizer, scheduler, scaler, RNG and data-loader state.

A checkpoint directory (local, ``s3://``, ``gs://``) holds ``step_XXXXXXXX.pt`` files, each
written atomically, and ``latest`` (also atomic) naming the newest. A failed or killed save
never replaces a good checkpoint. ``model.safetensors`` (weights only, for inference) is
exported next to them.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any

import numpy as np
import torch

from xfm.core.checkpoint import CheckpointError, atomic_save_bytes, read_bytes, save_state_dict
from xfm.core.checkpoint.storage import resolve

__all__ = [
    "TRAIN_STATE_FORMAT",
    "capture_rng",
    "check_compatible",
    "checkpoint_name",
    "join_url",
    "latest_checkpoint",
    "load_training_state",
    "prune_checkpoints",
    "restore_rng",
    "save_training_state",
]

TRAIN_STATE_FORMAT = "xfm-train-state/1"


def join_url(base: str, name: str) -> str:
    """``base/name`` for local paths and URLs."""
    return base.rstrip("/") + "/" + name


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:08d}.pt"


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) RNG states, and ``generator``'s."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def save_training_state(state: dict[str, Any], directory: str, step: int) -> str:
    """Write ``state`` as ``directory/step_XXXXXXXX.pt`` then point ``latest`` at it.

    Both writes are atomic; returns the checkpoint URL.
    """
    buf = io.BytesIO()
    torch.save({"format": TRAIN_STATE_FORMAT, **state}, buf)
    url = join_url(directory, checkpoint_name(step))
    atomic_save_bytes(buf.getvalue(), url)
    atomic_save_bytes(checkpoint_name(step).encode(), join_url(directory, "latest"))
    return url


def export_weights(model_state: dict[str, torch.Tensor], url: str, config: dict) -> None:
    """Write the model weights as safetensors with the model config in the metadata."""
    save_state_dict(model_state, url, metadata={"xfm_model_config": json.dumps(config)})


def latest_checkpoint(directory: str) -> str | None:
    """URL of the newest checkpoint in ``directory`` (from ``latest``), or None."""
    try:
        name = read_bytes(join_url(directory, "latest")).decode().strip()
    except FileNotFoundError:
        return None
    if not name:
        raise CheckpointError(f"{join_url(directory, 'latest')} is empty: the directory is corrupt")
    return join_url(directory, name)


def load_training_state(url: str) -> dict[str, Any]:
    """Read a training checkpoint; clear errors for missing, corrupt or foreign files."""
    try:
        data = read_bytes(url)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"training checkpoint {url!r} does not exist") from err
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"training checkpoint {url!r} is corrupt or truncated ({len(data)} bytes): "
            f"{type(err).__name__}: {err}"
        ) from err
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


#: Config sections that must match for an exact resume.
RESUME_KEYS = ("model", "seed", "precision", "optim", "data")


def check_compatible(saved: dict[str, Any], current: dict[str, Any], url: str) -> None:
    """Raise :class:`CheckpointError` listing every setting that differs from the checkpoint."""
    diffs: list[str] = []
    for key in RESUME_KEYS:
        diffs.extend(_diff(saved.get(key), current.get(key), key))
    if diffs:
        raise CheckpointError(
            f"cannot resume from {url!r}: the config does not match the one it was trained "
            f"with:\n  " + "\n  ".join(diffs[:20]) + ("\n  ..." if len(diffs) > 20 else "")
        )


def prune_checkpoints(directory: str, keep: int, current_step: int) -> None:
    """Delete step checkpoints older than the newest ``keep`` (never the current one)."""
    if keep <= 0:
        return
    fs, path = resolve(directory)
    try:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(".pt"))
    except FileNotFoundError:
        return
    steps = [n for n in names if n.startswith("step_")]
    current = checkpoint_name(current_step)
    for name in steps[:-keep]:
        if name != current:
            fs.rm(path.rstrip("/") + "/" + name)
