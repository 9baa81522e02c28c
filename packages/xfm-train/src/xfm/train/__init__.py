"""xfm.train: Streaming data, objectives, multi-objective trainer, distributed training, checkpoints."""

__version__ = "0.2.0"
