"""Loss curves of a run as a PNG (``xfm plot RUN_DIR``)."""

from __future__ import annotations

from pathlib import Path

from xfm.train.metrics import read_metrics

__all__ = ["plot_run"]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: int = 0) -> Path:
    """Plot every loss column of ``run_dir/metrics.csv`` against the step.

    One panel per loss (raw values faint, moving average bold) plus the total loss and the
    retrieval recalls when present. Returns the PNG path (default ``run_dir/loss_curves.png``).
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
    keys = [k for k in rows[0] if k == "loss" or "/" in k]
    keys += sorted({k for r in rows for k in r if k.startswith("eval/")} - set(keys))
    keys = [k for k in dict.fromkeys(keys) if any(k in r for r in rows)]
    window = smooth or max(1, len(rows) // 50)
    cols = 3
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        steps, vals = [p[0] for p in pts], [p[1] for p in pts]
        if key.startswith("eval/"):
            ax.plot(steps, vals, "o-")
        else:
            ax.plot(steps, vals, alpha=0.3, lw=0.8)
            ax.plot(steps, _smooth(vals, window), lw=1.6)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"xfm pretrain: {run_dir.name}")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    target = Path(out) if out else run_dir / "loss_curves.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
