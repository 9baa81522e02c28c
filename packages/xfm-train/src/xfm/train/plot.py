"""Loss curves of a run as a PNG (``xfm plot RUN_DIR``)."""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Any

from xfm.train.metrics import read_metrics

__all__ = ["ITM_PRIOR", "panels", "plot_run"]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


#: Cross-entropy of ITM's constant prediction "positive with p = 1/3" (one positive and two
#: hard negatives per pair): the loss of a model that has learnt nothing.
ITM_PRIOR = -(math.log(1 / 3) / 3 + 2 * math.log(2 / 3) / 3)


def _eval_order(key: str) -> tuple[Any, ...]:
    """Sort key of evaluation panels: per split, ``tr@K`` then ``ir@K`` (K as a number, so
    ``@5`` before ``@10``), then everything else (``r_mean``, accuracies) by name."""
    prefix, _, name = key.rpartition("/")
    m = re.fullmatch(r"(tr|ir)@(\d+)", name)
    if m:
        return (prefix, 0 if m.group(1) == "tr" else 1, int(m.group(2)), name)
    return (prefix, 2, 0, name)


def _title(run_dir: Path) -> str:
    """``xfm finetune TASK: NAME`` for a fine-tuning run folder, else ``xfm pretrain: NAME``."""
    cfg = run_dir / "config.yaml"
    task = None
    if cfg.is_file():
        import yaml

        with contextlib.suppress(yaml.YAMLError, OSError):
            data = yaml.safe_load(cfg.read_text())
            task = data.get("task") if isinstance(data, dict) else None
    kind = f"xfm finetune {task}" if task else "xfm pretrain"
    return f"{kind}: {run_dir.name}"


def _ylabel(key: str) -> str:
    if key.startswith("eval/") and ("@" in key or key.endswith("r_mean")):
        return "recall (%)"
    if key.startswith("eval/") or key.startswith("test/"):
        return "metric"
    if key == "lr":
        return "learning rate"
    return "loss"


def panels(rows: list[dict[str, float]]) -> list[str]:
    """The panel keys of ``metrics.csv`` rows, in plotting order: the loss columns as logged
    (total, then ``source/loss`` or a task's loss parts), then the evaluation metrics
    (``eval/...`` of pretraining, ``split/...`` of fine-tuning) in natural order
    (``tr@1, tr@5, tr@10, ir@1, ..., r_mean``). ``step``, ``lr``, ``samples_per_s`` and the
    counters (``bad/<source>``, ``skipped_steps``) get no panel, and ``eval/chance@K`` columns
    are drawn as lines, not panels."""
    skip = {"step", "lr", "samples_per_s", "skipped_steps"}
    skip |= {k for r in rows for k in r if k.startswith("bad/")}
    keys = [k for k in rows[0] if k not in skip and not k.startswith("eval/")]
    evals = {k for r in rows for k in r if k not in skip and k not in keys and "chance" not in k}
    keys += sorted(evals, key=_eval_order)
    return [k for k in dict.fromkeys(keys) if any(k in r for r in rows)]


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: int = 0) -> Path:
    """Plot every loss column of ``run_dir/metrics.csv`` against the step.

    One panel per loss (raw values faint, moving average bold, with a legend) plus the total
    loss and the retrieval recalls when present (panels in ``@1, @5, @10`` order, with the
    chance level as a dashed line when the run logged ``eval/chance@1``). ITM panels show the
    loss of a model that learnt nothing (:data:`ITM_PRIOR`) as a dashed line, so that a flat
    curve cannot pass for learning. Returns the PNG path (default ``run_dir/loss_curves.png``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.csv: is it an xfm pretrain run folder?")
    rows = read_metrics(path)
    if not rows:
        raise ValueError(f"{path} has no rows yet")
    keys = panels(rows)
    chance1 = [r["eval/chance@1"] for r in rows if "eval/chance@1" in r]
    window = smooth or max(1, len(rows) // 50)
    cols = 3
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    legend_done = False
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        steps, vals = [p[0] for p in pts], [p[1] for p in pts]
        if key.startswith("eval/"):
            ax.plot(steps, vals, "o-", label="held-out")
            k = re.search(r"@(\d+)$", key)
            if chance1 and k:
                level = min(100.0, chance1[-1] * int(k.group(1)))
                ax.axhline(level, ls="--", color="grey", lw=1, label=f"chance ({level:.2g}%)")
                ax.legend(fontsize=6, loc="best")
        else:
            if window > 1:
                ax.plot(steps, vals, alpha=0.3, lw=0.8, label="raw")
                ax.plot(steps, _smooth(vals, window), lw=1.6, label=f"moving average ({window})")
            else:
                ax.plot(steps, vals, lw=1.2, label="logged")
            if key.rsplit("/", 1)[-1] == "itm":
                ax.axhline(ITM_PRIOR, ls="--", color="grey", lw=1, label="learnt nothing")
                lo, hi = ax.get_ylim()
                ax.set_ylim(min(lo, ITM_PRIOR - 0.05), max(hi, ITM_PRIOR + 0.05))
                ax.legend(fontsize=6, loc="best")
            elif not legend_done:
                ax.legend(fontsize=6, loc="best")
                legend_done = True
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(_ylabel(key), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(_title(run_dir))
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    target = Path(out) if out else run_dir / "loss_curves.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
