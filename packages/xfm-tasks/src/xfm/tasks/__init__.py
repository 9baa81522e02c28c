"""xfm.tasks: Downstream tasks: heads, fine-tuning, evaluation and metrics."""

__version__ = "0.2.0"
