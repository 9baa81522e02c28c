"""The synthetic shapes-world dataset as a run uses it: build it on first use and expand
``{synth}`` in data paths (pretraining and fine-tuning configs alike).

A run's ``synth`` section is a mapping or a config object with ``out`` (the folder), optional
``create`` (build when missing; default true) and :class:`xfm.train.data.synth.SynthConfig`
fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xfm.train.distributed import barrier, is_main_process

__all__ = ["ensure_synthetic", "expand_synth", "synth_options"]

DEFAULT_OUT = "data/synth"


def synth_options(spec: Any) -> dict[str, Any]:
    """``spec`` (mapping, dataclass or pydantic model) as a plain dict."""
    if spec is None:
        return {}
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return dataclasses.asdict(spec)
    if hasattr(spec, "model_dump"):
        return dict(spec.model_dump())
    if isinstance(spec, Mapping):
        return dict(spec)
    raise TypeError(f"data.synth must be a mapping; got {type(spec).__name__}")


def expand_synth(path: str, spec: Any) -> str:
    """``path`` with ``{synth}`` replaced by the synthetic dataset folder of ``spec``."""
    if "{synth}" not in path:
        return path
    if spec is None:
        raise ValueError(f"data path {path!r} uses {{synth}} but data.synth is not set")
    return path.replace("{synth}", str(synth_options(spec).get("out") or DEFAULT_OUT))


def _older_format(out: Path) -> str:
    """The format of ``out/synth.json`` when it is older than this xfm's, else ``""``."""
    import json

    from xfm.train.data.synth.build import SYNTH_FORMAT

    try:
        found = json.loads((out / "synth.json").read_text()).get("format", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return str(found) if found != SYNTH_FORMAT else ""


def ensure_synthetic(
    spec: Any, progress: bool = True, print_fn: Callable[[str], None] | None = None
) -> None:
    """Build the dataset described by ``spec`` unless its ``synth.json`` exists (rank 0; the
    other ranks wait at a barrier); one of an older format is built again. ``None``: nothing
    to do.

    Raises:
        FileNotFoundError: the dataset is missing and ``create`` is false.
        ValueError: ``spec`` has keys that are not ``out``, ``create`` or SynthConfig fields.
    """
    if spec is None:
        return
    options = synth_options(spec)
    out = Path(str(options.pop("out", None) or DEFAULT_OUT))
    create = bool(options.pop("create", True))
    stale = is_main_process() and _older_format(out)
    if stale:
        import shutil

        from xfm.train.data.synth.build import GENERATED

        if print_fn is not None:
            print_fn(f"{out} was built by an older xfm ({stale}): building it again")
        for name in GENERATED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if is_main_process() and not (out / "synth.json").is_file():
        from xfm.train.data.synth import SynthConfig, build_synthetic

        fields = {f.name for f in dataclasses.fields(SynthConfig)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(
                f"data.synth: unknown keys {unknown}; expected out, create and {sorted(fields)}"
            )
        if not create:
            raise FileNotFoundError(
                f"synthetic dataset {str(out)!r} is missing and data.synth.create is false"
            )
        if print_fn is not None:
            print_fn(f"building the synthetic dataset in {out} (first run only) ...")
        build_synthetic(out, SynthConfig(**options), progress=progress)
    barrier()
