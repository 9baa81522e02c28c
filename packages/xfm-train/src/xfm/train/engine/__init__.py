"""One training engine for pretraining (:mod:`xfm.train.trainer`) and fine-tuning
(:mod:`xfm.tasks.finetune`): runtime, wrapping, step, state and loop (see :mod:`.engine`)."""

from xfm.train.engine.engine import Engine, EngineSettings
from xfm.train.engine.epoch_loader import EpochLoader
from xfm.train.engine.runtime import autocast_factory, resolve_device, seed_everything
from xfm.train.engine.state import Checkpoints, Resumed
from xfm.train.engine.step import Stage, Stepper, StepResult
from xfm.train.engine.wrapping import Wrapped, unwrap, wrap

__all__ = [
    "Checkpoints",
    "Engine",
    "EngineSettings",
    "EpochLoader",
    "Resumed",
    "Stage",
    "StepResult",
    "Stepper",
    "Wrapped",
    "autocast_factory",
    "resolve_device",
    "seed_everything",
    "unwrap",
    "wrap",
]
