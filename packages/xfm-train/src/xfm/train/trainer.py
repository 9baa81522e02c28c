"""The multi-objective pretraining job (``xfm pretrain``).

One optimizer step = ``optim.accumulate`` micro-steps, each taking one batch from every
enabled source and back-propagating the weighted sum of their objectives (SPEC section 2).
What is pretraining's own lives here: the streaming data, the X-FM model, the objectives, the
zero-shot retrieval evaluation and the summary. Device, precision, wrapping, the step,
checkpoints, metrics and the loop are the shared :class:`xfm.train.engine.Engine`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from xfm.core.checkpoint import load_into, load_state_dict
from xfm.core.config import save_config, to_dict
from xfm.train.checkpointing import capture_rng, join_url, restore_rng
from xfm.train.config import DEFAULT_MODEL, PretrainConfig, default_objectives
from xfm.train.distributed import barrier, get_rank, is_main_process
from xfm.train.engine import Engine, EngineSettings, seed_everything
from xfm.train.init_check import check_init
from xfm.train.loss import PretrainLoss, build_objectives
from xfm.train.optim import build_optimizer, build_scheduler
from xfm.train.synthetic import ensure_synthetic, expand_synth

__all__ = ["Trainer"]

log = logging.getLogger("xfm.train")


def _as_dict(section: Any) -> dict[str, Any]:
    """A config section (free dict or typed) as a dict of the values given."""
    if isinstance(section, Mapping):
        return dict(section)
    return {k: v for k, v in to_dict(section).items() if v is not None}


def engine_settings(cfg: PretrainConfig) -> EngineSettings:
    """The engine part of a pretraining config."""
    return EngineSettings(
        run_dir=cfg.run_dir,
        steps=cfg.steps,
        device=cfg.device,
        precision=cfg.precision,
        threads=cfg.threads,
        deterministic=cfg.deterministic,
        distributed=cfg.distributed,
        compile=cfg.compile,
        accumulate=cfg.optim.accumulate,
        grad_clip=cfg.optim.grad_clip,
        on_nonfinite=cfg.optim.on_nonfinite,
        checkpoint_dir=cfg.checkpoint.url,
        checkpoint_every=cfg.checkpoint.every,
        checkpoint_keep=cfg.checkpoint.keep,
        log_every=cfg.log.every,
        eval_every=cfg.eval.every,
        tensorboard=cfg.log.tensorboard,
        progress=cfg.log.progress,
        name="pretrain",
    )


def trend(key: str, first: float, last: float) -> str:
    """How a loss moved: ``down``, ``flat`` (less than 2% either way), ``NOT down``; an ITM
    loss still within 0.01 of :data:`~xfm.train.plot.ITM_PRIOR` (a constant prediction) is
    ``at prior: learnt nothing``."""
    from xfm.train.plot import ITM_PRIOR

    if not math.isfinite(last):
        return "NOT down"
    if key.rsplit("/", 1)[-1] == "itm" and abs(last - ITM_PRIOR) < 0.01:
        return "at prior: learnt nothing"
    if abs(last - first) < 0.02 * abs(first):
        return "flat"
    return "down" if last < first else "NOT down"


class Trainer:
    """Build everything from a :class:`PretrainConfig` and run it with :meth:`fit`.

    Args:
        config: the run configuration.
        resume: ``True``: continue from the newest checkpoint of the run (error when there is
            none); a URL: continue from that checkpoint; ``False``: start fresh.
        print_fn: where the summary lines go (rank 0 only).
        overwrite: replace an earlier run in ``run_dir`` (else such a folder is refused
            unless resuming).
    """

    def __init__(
        self,
        config: PretrainConfig,
        resume: bool | str = False,
        print_fn: Callable[[str], None] = print,
        overwrite: bool = False,
    ) -> None:
        self.cfg = config
        self.resume = resume
        self.engine = Engine(engine_settings(config), print_fn)
        self.engine.settings.overwrite = overwrite
        self.eval_results: list[tuple[int, dict[str, float]]] = []

    @property
    def print(self) -> Callable[[str], None]:
        return self.engine.print

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.engine.step

    @property
    def history(self) -> list[dict[str, float]]:
        """Per-step metrics of the run (the last 1000 survive a resume)."""
        return self.engine.history

    # ------------------------------------------------------------------------ setup
    def _expand(self, url: str) -> str:
        return expand_synth(url, self.cfg.data.synth)

    def _model_config(self, tokenizer: Any) -> dict[str, Any]:
        spec = to_dict(self.cfg.model) if self.cfg.model else {}
        spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
        text = spec.setdefault("text", {"name": "roberta"})
        if tokenizer is not None:
            text.setdefault("vocab_size", int(tokenizer.vocab_size))
            text.setdefault("pad_token_id", int(tokenizer.pad_id))
        vision = spec.setdefault("vision", {"name": "beit_v2"})
        proc = _as_dict(self.cfg.data.process)
        if proc.get("image_size") is not None:
            vision.setdefault("image_size", proc["image_size"])
        if proc.get("patch_size") is not None:
            vision.setdefault("patch_size", proc["patch_size"])
        return spec

    def _create_model(self) -> torch.nn.Module:
        """The model ``model.name`` names (default ``xfm``), created through the ``model``
        registry with the other keys of the model section as its options."""
        from xfm.core.registry import create

        options = {k: v for k, v in self.model_spec.items() if k != "name"}
        return create("model", self.model_spec.get("name", DEFAULT_MODEL), **options)

    def _build_data(self) -> tuple[Any, Any, Any]:
        from xfm.train.data import LoaderConfig, ProcessConfig, SourceConfig, SourceLoader
        from xfm.train.data.transforms import ImageTextProcessor, load_tokenizer

        data = self.cfg.data
        tok_url = self._expand(data.tokenizer) if data.tokenizer else None
        tokenizer = load_tokenizer(tok_url) if tok_url else None
        proc_opts = _as_dict(data.process)
        proc_opts.setdefault("seed", self.cfg.seed)
        process = ProcessConfig(tokenizer=tok_url, **proc_opts)
        loader_opts = _as_dict(data.loader)
        loader_opts.setdefault("seed", self.cfg.seed)
        loader_cfg = LoaderConfig(**loader_opts)
        sources = {
            name: SourceConfig(self._expand(s.url), s.batch_size, enabled=s.enabled)
            for name, s in data.sources.items()
            if s.enabled
        }
        if not sources:
            raise ValueError("data.sources enables no source; enable at least one")
        from xfm.train.data import build_loader

        loader = build_loader(sources, loader_cfg, process)
        evaluator = None
        if data.eval_url:
            from xfm.train.evaluation import RetrievalEvaluator

            eval_proc = dataclasses.replace(process, mim=False, augment=False)
            pad = int(tokenizer.pad_id) if tokenizer is not None else 0
            ld = SourceLoader(
                "image_text",
                SourceConfig(self._expand(data.eval_url), self.cfg.eval.batch_size, shuffle=False),
                dataclasses.replace(loader_cfg, num_workers=0),
                ImageTextProcessor(eval_proc, tokenizer),
                pad_id=pad,
            )
            evaluator = RetrievalEvaluator(ld, self.cfg.eval.max_pairs)
        return tokenizer, loader, evaluator

    def setup(self) -> None:
        """Device, process group, data, model, objectives, optimizer; resume if asked."""
        cfg = self.cfg
        engine = self.engine
        self.device = engine.start(self.resume)
        ensure_synthetic(cfg.data.synth, progress=cfg.log.progress, print_fn=self.print)
        seed_everything(cfg.seed)
        tokenizer, self.loader, self.evaluator = self._build_data()

        self.model_spec = self._model_config(tokenizer)
        seed_everything(cfg.seed)
        self.model = self._create_model().to(self.device)
        if cfg.init_from:
            report = load_into(self.model, load_state_dict(cfg.init_from), strict=False)
            line = check_init(
                report, cfg.init_from, strict=cfg.init_strict, new_params=cfg.optim.new_params
            )
            self.print(f"initialised from {cfg.init_from}: {line}")
            if not self.model.config.vision_guidance:
                self.model.reset_mim_teacher()  # the frozen MIM teacher = the loaded encoder
        new_names = self._init_public() if cfg.init is not None else None
        # same initial weights on every rank; different dropout / hard negatives per rank
        rank = get_rank()
        seed_everything(cfg.seed * 1_000_003 + rank + 1)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + rank + 2)
        objectives, weights = {}, {}
        for source, section in cfg.data.sources.items():
            if not section.enabled:
                continue
            names = section.objectives or default_objectives(source)
            objectives[source] = build_objectives(names, section.options, source)
            weights[source] = section.weight
        self.objectives = objectives
        self.loss_module = PretrainLoss(self.model, objectives, weights, self.generator)
        self.columns = ["loss", *self.loss_module.loss_names()]
        wrapped = engine.prepare(
            self.model,
            self.loss_module,
            # the model, not the wrapper: new_params patterns name model parameters
            lambda trainable: build_optimizer(self.model, cfg.optim, self.device, new_names),
            lambda optimizer: build_scheduler(optimizer, cfg.optim, cfg.steps),
            probe=self._probe_loss,
            generator=self.generator,
        )
        self.mode, self.staged, self.frozen = wrapped.mode, wrapped.staged, engine.frozen
        self.trainable = wrapped.trainable
        engine.resume(self.resume, self._config_dict(), self.loader.load_state_dict)
        evals = []
        if self.evaluator is not None:
            evals = [f"eval/{d}@{k}" for d in ("tr", "ir") for k in (1, 5, 10)]
            evals += ["eval/r_mean", "eval/chance@1"]
        counters = [f"bad/{source}" for source in self.loader.sources]
        if cfg.optim.on_nonfinite == "skip_step":
            counters.append("skipped_steps")
        engine.columns = [*self.columns, "lr", "samples_per_s", *counters, *evals]
        if is_main_process():
            engine.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, engine.run_dir / "config.yaml")

    def _init_public(self) -> list[str] | None:
        """``init:``: the encoders from public weights, on a fresh start only (a resumed run's
        checkpoint holds the weights). Returns the parameters that get the new-parameter lr
        (``None``: ``optim.new_params`` decides), recorded beside the checkpoints for resumes."""
        from xfm.train.public_init import apply_init, read_init_record, write_init_record

        init, engine = self.cfg.init, self.engine
        left_new = init.new_params == "left_new"
        if self.resume:
            if not left_new:
                return None
            url = self.resume if isinstance(self.resume, str) else None
            where = (url.rsplit("/", 1)[0] if "/" in url else ".") if url else engine.ckpt_dir
            return read_init_record(where)  # beside the checkpoint resumed from
        result = apply_init(self.model, init)
        for line in result.lines(self.cfg.optim.new_param_lr_mult if left_new else None):
            self.print(line)
        if is_main_process():
            write_init_record(engine.ckpt_dir, result, init)
        if not self.model.config.vision_guidance:
            self.model.reset_mim_teacher()  # the frozen MIM teacher = the loaded encoder
        return result.new if left_new else None

    def _probe_loss(self) -> torch.Tensor:
        """The loss of one probe step (for the unused-parameter probe); data and RNG state
        are restored afterwards so that the run is unchanged."""
        rng = capture_rng(self.generator)
        state = self.loader.state_dict()
        batches, _ = self._next_batches()
        with self.engine.autocast():
            total, _ = self.loss_module(batches)
        self.loader.load_state_dict(state)
        restore_rng(rng, self.generator)
        return total

    # ---------------------------------------------------------------------- state
    def _config_dict(self) -> dict[str, Any]:
        d = to_dict(self.cfg)
        d["model"] = self.model_spec
        return d

    def save_checkpoint(self) -> str | None:
        """Write the training state (rank 0) after ``self.step`` steps; prune old ones."""
        return self.engine.save_checkpoint(self.loader.state_dict(), self._config_dict())

    # ------------------------------------------------------------------------ train
    def _next_batches(self) -> tuple[dict[str, Any], int]:
        """One batch per enabled source (on the device) and the number of samples.

        Starting a data-loader epoch draws a seed from the global torch RNG; that draw is
        isolated so that the RNG stream of the model (dropout, drop path) is the same whether
        the run was resumed or not."""
        with torch.random.fork_rng(devices=[]):
            host = self.loader.next_step()
        batches = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
        return batches, sum(len(b) for b in batches.values())

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns the step's metrics (losses averaged over micro-steps)
        with the cumulative bad-sample count of each source, ``bad/<source>``."""
        self.model.clamp_temp()
        values = self.engine.train_step(
            self._next_batches, self.engine.forward, self.loss_module.stages
        )
        values.update({f"bad/{k}": float(n) for k, n in self.loader.bad_samples().items()})
        return values

    def evaluate(self) -> dict[str, float] | None:
        """Zero-shot retrieval on the held-out split (None without ``data.eval_url``)."""
        if self.evaluator is None:
            return None
        with self.engine.full_model() as model:
            result = self.evaluator(model, self.device, self.engine.autocast)
        self.eval_results.append((self.step, result))
        return result

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Run to ``config.steps`` optimizer steps (from the resumed step); return a summary.

        ``until`` stops earlier (at that step, with a checkpoint) without changing the
        schedule, e.g. to split a run into parts.
        """
        if not hasattr(self, "model"):
            self.setup()
        cfg = self.cfg
        if self.engine.finished:  # resumed at the last step: report, change nothing
            return {"steps": self.step, "elapsed_s": 0.0, "retrieval": None, "finished": True}
        self.model.train()
        elapsed, steps = self.engine.fit(
            self.train_step,
            self.save_checkpoint,
            evaluate=lambda: self._log_eval(self.evaluate()),
            until=until,
        )
        if self.eval_results and self.eval_results[-1][0] == self.step:
            result = self.eval_results[-1][1]
        elif cfg.eval.at_end:
            result = self.evaluate()
            self._log_eval(result)
        else:
            result = None
        return self._finish(elapsed, steps, result)

    def _log_eval(self, result: dict[str, float] | None) -> None:
        if result is None or not is_main_process():
            return
        self.engine.log(
            self.step,
            {f"eval/{k}": v for k, v in result.items() if "@" in k}  # with chance@1 (plot)
            | {"eval/r_mean": result["r_mean"]},
        )
        self.print(
            f"step {self.step}: zero-shot retrieval on {int(result['images'])} held-out images "
            f"TR@1/5/10 {result['tr@1']:.1f}/{result['tr@5']:.1f}/{result['tr@10']:.1f}  "
            f"IR@1/5/10 {result['ir@1']:.1f}/{result['ir@5']:.1f}/{result['ir@10']:.1f}  "
            f"(chance R@1 {result['chance@1']:.2f}: TR@1 {result['tr@1'] / result['chance@1']:.1f}x, "
            f"IR@1 {result['ir@1'] / result['chance@1']:.1f}x chance)"
        )

    def _finish(
        self, elapsed: float, steps: int, result: dict[str, float] | None
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {"steps": self.step, "elapsed_s": elapsed, "retrieval": result}
        engine = self.engine
        if self.cfg.checkpoint.export_safetensors:
            # the default model's spec is exported as plain XFMConfig fields (what the task
            # loaders read); a plug-in model's keeps its registry name
            spec = dict(self.model_spec)
            if spec.get("name") == DEFAULT_MODEL:
                del spec["name"]
            engine.export(join_url(engine.ckpt_dir, "model.safetensors"), spec)
        if is_main_process():
            engine.close_metrics()
            hist = self.history
            n = max(1, min(10, len(hist) // 5))
            first = {
                k: sum(h[k] for h in hist[:n]) / n for k in self.columns if hist and k in hist[0]
            }
            last = {
                k: sum(h[k] for h in hist[-n:]) / n for k in self.columns if hist and k in hist[-1]
            }
            summary["first"], summary["last"] = first, last
            summary["bad_samples"] = self.loader.bad_samples()
            summary["skipped_steps"] = engine.skipped_steps
            self.print(
                f"trained {steps} steps in {elapsed:.0f}s; losses (mean of first/last {n} steps):"
            )
            for k in first:
                self.print(
                    f"  {k:<22} {first[k]:8.4f} -> {last.get(k, float('nan')):8.4f}  "
                    f"({trend(k, first[k], last.get(k, math.nan))})"
                )
            if self.cfg.log.plot:
                from xfm.train.plot import plot_run

                png = plot_run(engine.run_dir)
                summary["plot"] = str(png)
                self.print(f"loss curves: {png}")
            if any(summary["bad_samples"].values()):
                self.print(
                    "bad samples skipped (whole run): "
                    + ", ".join(f"{k} {n}" for k, n in summary["bad_samples"].items())
                )
            if engine.skipped_steps:
                self.print(
                    f"steps skipped for a non-finite loss (whole run): {engine.skipped_steps}"
                )
            self.print(f"checkpoints: {engine.ckpt_dir}")
            if self.cfg.checkpoint.export_safetensors:
                self.print(f"weights: {join_url(engine.ckpt_dir, 'model.safetensors')}")
        barrier()
        return summary

    def close(self) -> None:
        """Stop loader workers and leave the process group."""
        with contextlib.suppress(Exception):  # (no loader when setup failed early)
            self.loader.release()
        if getattr(self, "evaluator", None) is not None:
            with contextlib.suppress(Exception):
                self.evaluator.loader.release()
        self.engine.close()
