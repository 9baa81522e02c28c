"""The run folder: never silently overwritten.

A run folder that already holds a run (its metrics, config, weights or checkpoints) is
refused unless the new run resumes it (``--resume``) or asks to replace it (``--overwrite``,
which deletes those outputs first so that no stale checkpoint or metrics row of the old run
survives next to the new one).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from xfm.core.checkpoint import CheckpointError
from xfm.core.checkpoint.storage import resolve

__all__ = ["RUN_OUTPUTS", "RunFolderError", "earlier_run", "prepare_run_dir"]

#: Files and folders of ``run_dir`` that a pretraining or fine-tuning run writes.
RUN_OUTPUTS: tuple[str, ...] = (
    "metrics.csv",
    "config.yaml",
    "model.safetensors",
    "eval.json",
    "loss_curves.png",
    "tensorboard",
)


class RunFolderError(CheckpointError):
    """The run folder holds an earlier run and neither resume nor overwrite was asked."""


def _checkpoint_files(ckpt_dir: str) -> list[str]:
    """Paths (in ``ckpt_dir``'s filesystem) of the checkpoint files a run writes there."""
    fs, path = resolve(ckpt_dir)
    try:
        names = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for full in names:
        name = str(full).rstrip("/").rsplit("/", 1)[-1]
        if name == "latest" or name == "model.safetensors" or name.startswith("step_"):
            out.append(str(full))
    return out


def earlier_run(run_dir: Path, ckpt_dir: str) -> list[str]:
    """What of an earlier run ``run_dir`` / ``ckpt_dir`` hold (names for a message)."""
    found = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    ckpts = _checkpoint_files(ckpt_dir)
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint file(s) in {ckpt_dir}")
    return found


def prepare_run_dir(run_dir: Path, ckpt_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding an earlier run unless ``resume``; with ``overwrite``, delete
    the earlier run's outputs and checkpoints first.

    Raises:
        RunFolderError: the folder holds an earlier run and neither was asked.
    """
    if resume:
        return
    found = earlier_run(run_dir, ckpt_dir)
    if not found:
        return
    if not overwrite:
        raise RunFolderError(
            f"run folder {str(run_dir)!r} already holds a run ({', '.join(found)}): continue it "
            f"with --resume, replace it with --overwrite, or choose another run_dir="
        )
    for name in RUN_OUTPUTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    fs, _ = resolve(ckpt_dir)
    for path in _checkpoint_files(ckpt_dir):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)
