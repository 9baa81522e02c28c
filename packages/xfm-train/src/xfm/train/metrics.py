"""Per-step metrics: a CSV file (one row per logged step) and TensorBoard scalars."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as ``{column: float}`` (empty cells left out)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


class MetricsLogger:
    """Append metrics rows to ``run_dir/metrics.csv`` and (optionally) TensorBoard.

    Float values are written with ``repr`` so that they read back bit-exactly.

    Args:
        run_dir: local folder.
        columns: every column after ``step`` (fixed for the run).
        tensorboard: also write ``run_dir/tensorboard`` event files.
        resume_step: keep only rows with ``step <= resume_step`` of an existing file
            (``None``: start a new file).
    """

    def __init__(
        self,
        run_dir: str | Path,
        columns: Sequence[str],
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.csv"
        self.columns = ["step", *columns]
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
            extra = {k for r in kept for k in r} - set(self.columns)
            self.columns += sorted(extra)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115
        self._writer = csv.DictWriter(self._file, self.columns, extrasaction="ignore")
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard not installed: CSV only
                self._tb = None

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Write one row (unknown keys are ignored in the CSV, kept in TensorBoard; a row with
        no CSV column is not written to the CSV)."""
        row: dict[str, Any] = {"step": step}
        for k, v in values.items():
            row[k] = repr(float(v)) if isinstance(v, float) and math.isfinite(v) else v
        if any(k in self.columns for k in values):
            self._writer.writerow(row)
            self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()
