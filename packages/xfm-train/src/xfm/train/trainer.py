"""The multi-objective pretraining loop (``xfm pretrain``).

One optimizer step = ``optim.accumulate`` micro-steps, each taking one batch from every
enabled source and back-propagating the weighted sum of their objectives (SPEC section 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xfm.core.checkpoint import CheckpointError, load_into, load_state_dict
from xfm.core.config import save_config, to_dict
from xfm.train import fsdp
from xfm.train.checkpointing import (
    capture_rng,
    check_compatible,
    export_weights,
    join_url,
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    restore_rng,
    save_training_state,
)
from xfm.train.config import PretrainConfig, default_objectives
from xfm.train.distributed import (
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from xfm.train.loss import PretrainLoss, build_objectives
from xfm.train.metrics import MetricsLogger
from xfm.train.optim import build_optimizer, build_scheduler

__all__ = ["Trainer", "resolve_device"]

log = logging.getLogger("xfm.train")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available (``LOCAL_RANK`` picks the GPU), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class Trainer:
    """Build everything from a :class:`PretrainConfig` and run it with :meth:`fit`.

    Args:
        config: the run configuration.
        resume: ``True``: continue from the newest checkpoint of the run (error when there is
            none); a URL: continue from that checkpoint; ``False``: start fresh.
        print_fn: where the summary lines go (rank 0 only).
    """

    def __init__(
        self,
        config: PretrainConfig,
        resume: bool | str = False,
        print_fn: Callable[[str], None] = print,
    ) -> None:
        self.cfg = config
        self.resume = resume
        self.print = print_fn if is_main_process() else (lambda _: None)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.eval_results: list[tuple[int, dict[str, float]]] = []

    # ------------------------------------------------------------------------ setup
    def _expand(self, url: str) -> str:
        synth = self.cfg.data.synth
        if "{synth}" in url:
            if synth is None:
                raise ValueError(f"data URL {url!r} uses {{synth}} but data.synth is not set")
            url = url.replace("{synth}", synth.out)
        return url

    def _ensure_synthetic(self) -> None:
        synth = self.cfg.data.synth
        if synth is None:
            return
        if is_main_process() and not (Path(synth.out) / "synth.json").is_file():
            if not synth.create:
                raise FileNotFoundError(
                    f"synthetic dataset {synth.out!r} is missing and data.synth.create is false"
                )
            from xfm.train.data.synth import SynthConfig, build_synthetic

            fields = {f.name for f in dataclasses.fields(SynthConfig)}
            options = {k: v for k, v in dataclasses.asdict(synth).items() if k in fields}
            self.print(f"building the synthetic dataset in {synth.out} (first run only) ...")
            build_synthetic(synth.out, SynthConfig(**options), progress=self.cfg.log.progress)
        barrier()

    def _model_config(self, tokenizer: Any) -> dict[str, Any]:
        spec = to_dict(self.cfg.model) if self.cfg.model else {}
        spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
        text = spec.setdefault("text", {"name": "roberta"})
        if tokenizer is not None:
            text.setdefault("vocab_size", int(tokenizer.vocab_size))
            text.setdefault("pad_token_id", int(tokenizer.pad_id))
        vision = spec.setdefault("vision", {"name": "beit_v2"})
        proc = self.cfg.data.process
        if "image_size" in proc:
            vision.setdefault("image_size", proc["image_size"])
        if "patch_size" in proc:
            vision.setdefault("patch_size", proc["patch_size"])
        return spec

    def _build_data(self) -> tuple[Any, Any, Any]:
        from xfm.train.data import LoaderConfig, ProcessConfig, SourceConfig, SourceLoader
        from xfm.train.data.transforms import ImageTextProcessor, load_tokenizer

        data = self.cfg.data
        tok_url = self._expand(data.tokenizer) if data.tokenizer else None
        tokenizer = load_tokenizer(tok_url) if tok_url else None
        proc_opts = dict(data.process)
        proc_opts.setdefault("seed", self.cfg.seed)
        process = ProcessConfig(tokenizer=tok_url, **proc_opts)
        loader_opts = dict(data.loader)
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
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.device = resolve_device(cfg.device)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        init_distributed(self.device)
        self.world = get_world_size()
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = cfg.checkpoint.url or str(self.run_dir / "checkpoints")
        self._ensure_synthetic()
        _seed_everything(cfg.seed)
        tokenizer, self.loader, self.evaluator = self._build_data()

        from xfm.fusion.model import XFM, XFMConfig

        self.model_spec = self._model_config(tokenizer)
        _seed_everything(cfg.seed)
        self.model = XFM(XFMConfig(**self.model_spec)).to(self.device)
        if cfg.init_from:
            report = load_into(self.model, load_state_dict(cfg.init_from), strict=False)
            self.print(f"initialised from {cfg.init_from}: {report}")
            if not self.model.config.vision_guidance:
                self.model.reset_mim_teacher()  # the frozen MIM teacher = the loaded encoder
        # same initial weights on every rank; different dropout / hard negatives per rank
        rank = get_rank()
        _seed_everything(cfg.seed * 1_000_003 + rank + 1)
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
        self.columns = ["loss"] + [
            f"{s}/{k}" for s, objs in objectives.items() for k in self._loss_keys(objs)
        ]
        self._wrap()
        self.optimizer = build_optimizer(self.trainable, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.steps)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        resume_step = self._maybe_resume()
        if is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            evals = []
            if self.evaluator is not None:
                evals = [f"eval/{d}@{k}" for d in ("tr", "ir") for k in (1, 5, 10)]
                evals.append("eval/r_mean")
            self.metrics = MetricsLogger(
                self.run_dir,
                [*self.columns, "lr", "samples_per_s", *evals],
                cfg.log.tensorboard,
                resume_step,
            )

    @staticmethod
    def _loss_keys(objs: list) -> list[str]:
        keys = []
        for name, _, _ in objs:
            keys += ["bbox", "giou"] if name == "bbox" else [name]
        return keys

    def _wrap(self) -> None:
        """DDP / FSDP / compile. ``self.trainable`` is what the optimizer sees."""
        cfg = self.cfg
        module: nn.Module = self.loss_module
        mode = cfg.distributed
        if mode == "auto":
            mode = "ddp" if is_distributed() else "none"
        if mode in ("ddp", "fsdp") and not is_distributed():
            mode = "none"
        if mode != "none":
            self._freeze_unreached()
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DDP(module, device_ids=ids)
        elif mode == "fsdp":
            self.replicated = fsdp.shard(module)
        self.mode = mode
        # staged backward (lower peak memory) needs one backward per forward to be allowed
        self.staged = mode == "none" and not cfg.compile
        self.trainable = module
        self.forward_module = torch.compile(module) if cfg.compile else module

    def _freeze_unreached(self) -> None:
        """Exclude explicitly the parameters no enabled objective reaches.

        Runs one probe step (data, RNG and loader state restored afterwards) and sets
        ``requires_grad=False`` on parameters that got no gradient, so that DDP needs no
        ``find_unused_parameters``.
        """
        rng = capture_rng(self.generator)
        state = self.loader.state_dict()
        batches = {k: v.to(self.device) for k, v in self._next_batches().items()}
        with self._autocast():
            total, _ = self.loss_module(batches)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(total, params, allow_unused=True)
        names = {id(p): n for n, p in self.model.named_parameters()}
        frozen = []
        for p, g in zip(params, grads):
            if g is None:
                p.requires_grad_(False)
                frozen.append(names[id(p)])
        self.loader.load_state_dict(state)
        restore_rng(rng, self.generator)
        self.frozen = frozen
        if frozen:
            groups = sorted({re.sub(r"\.\d+\..*|\.(weight|bias)$", "", n) for n in frozen})
            self.print(f"excluded from training (no enabled objective reaches them): {groups}")

    def _autocast(self) -> contextlib.AbstractContextManager:
        p = self.cfg.precision
        if p == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ---------------------------------------------------------------------- resume
    def _config_dict(self) -> dict[str, Any]:
        d = to_dict(self.cfg)
        d["model"] = self.model_spec
        return d

    def _maybe_resume(self) -> int | None:
        if not self.resume:
            return None
        url = self.resume if isinstance(self.resume, str) else latest_checkpoint(self.ckpt_dir)
        if url is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {self.ckpt_dir!r} (no 'latest' file); "
                f"start without --resume"
            )
        state = load_training_state(url)
        check_compatible(state["config"], self._config_dict(), url)
        try:
            if self.mode == "fsdp":
                fsdp.load_full_state(
                    self.trainable, self.optimizer, state["model"], state["optimizer"]
                )
            else:
                load_into(self.model, state["model"], strict=True)
                self.optimizer.load_state_dict(state["optimizer"])
        except (CheckpointError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"cannot resume from {url!r}: {err}") from err
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        rank_rng = state["rng"]
        rng = rank_rng[get_rank()] if isinstance(rank_rng, list) else rank_rng
        restore_rng(rng, self.generator)
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.print(f"resumed from {url} at step {self.step}")
        return self.step

    def save_checkpoint(self) -> str | None:
        """Write the training state (rank 0) after ``self.step`` steps; prune old ones."""
        rng = capture_rng(self.generator)
        rngs: list[Any] = [rng]
        if is_distributed():
            rngs = [None] * self.world
            torch.distributed.all_gather_object(rngs, rng)
        model_state = self._model_state()
        optimizer_state = self._optimizer_state()
        url = None
        if is_main_process():
            state = {
                "model": model_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "step": self.step,
                "rng": rngs if len(rngs) > 1 else rngs[0],
                "loader": self.loader.state_dict(),
                "config": self._config_dict(),
                "history": self.history[-1000:],
            }
            url = save_training_state(state, self.ckpt_dir, self.step)
            prune_checkpoints(self.ckpt_dir, self.cfg.checkpoint.keep, self.step)
        barrier()
        return url

    def _model_state(self) -> dict[str, torch.Tensor]:
        """Full model state in our names on rank 0, ``{}`` on the others (under FSDP a
        collective: call it on every rank)."""
        if self.mode == "fsdp":
            return fsdp.full_model_state(self.trainable)
        if not is_main_process():
            return {}
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _optimizer_state(self) -> dict[str, Any]:
        """Optimizer state (full and keyed by parameter name under FSDP; a collective there)."""
        if self.mode == "fsdp":
            return fsdp.full_optimizer_state(self.trainable, self.optimizer)
        return self.optimizer.state_dict()

    # ------------------------------------------------------------------------ train
    def _next_batches(self) -> dict[str, Any]:
        """One batch per enabled source. Starting a data-loader epoch draws a seed from the
        global torch RNG; that draw is isolated so that the RNG stream of the model (dropout,
        drop path) is the same whether the run was resumed or not."""
        with torch.random.fork_rng(devices=[]):
            return self.loader.next_step()

    def _micro_step(self, sync: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        batches = {k: v.to(self.device, non_blocking=True) for k, v in self._next_batches().items()}
        samples = sum(len(b) for b in batches.values())
        ctx = contextlib.nullcontext()
        if not sync and hasattr(self.trainable, "no_sync"):
            ctx = self.trainable.no_sync()
        acc = self.cfg.optim.accumulate

        def backward(loss: torch.Tensor) -> None:
            loss = loss / acc
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()

        if self.staged:  # one process: each stage's graph is freed before the next runs
            total, parts = self.forward_module(batches, backward, self._autocast)
            return total.detach(), parts, samples
        with ctx:
            with self._autocast():
                total, parts = self.forward_module(batches)
            backward(total)
        return total.detach(), parts, samples

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns the step's metrics (losses averaged over micro-steps)."""
        cfg = self.cfg
        self.model.clamp_temp()
        acc = cfg.optim.accumulate
        total = torch.zeros((), device=self.device)
        parts: dict[str, torch.Tensor] = {}
        samples = 0
        for i in range(acc):
            t, p, n = self._micro_step(sync=i == acc - 1)
            total += t.float() / acc
            for k, v in p.items():
                parts[k] = parts.get(k, 0) + v.float() / acc
            samples += n
        if self.mode == "fsdp":
            fsdp.sync_replicated_grads(self.replicated)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.optim.grad_clip > 0:  # (FSDP: sharded DTensor grads; the norm is the global one)
            params = [p for p in self.trainable.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        values = {"loss": float(total)}
        values.update({k: float(v) for k, v in parts.items()})
        values["lr"] = float(lr)
        values["_samples"] = float(samples * self.world)
        return values

    def evaluate(self) -> dict[str, float] | None:
        """Zero-shot retrieval on the held-out split (None without ``data.eval_url``)."""
        if self.evaluator is None:
            return None
        full = fsdp.unsharded(self.trainable) if self.mode == "fsdp" else contextlib.nullcontext()
        with full:
            result = self.evaluator(self.model, self.device, self._autocast)
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
        self.model.train()
        bar = None
        if cfg.log.progress and is_main_process():
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="pretrain", dynamic_ncols=True)
        t0, start_step = time.perf_counter(), self.step
        window: list[tuple[float, float]] = []
        try:
            stop = cfg.steps if until is None else min(until, cfg.steps)
            while self.step < stop:
                ts = time.perf_counter()
                values = self.train_step()
                dt = time.perf_counter() - ts
                window = ([*window, (values.pop("_samples"), dt)])[-20:]
                values["samples_per_s"] = sum(s for s, _ in window) / sum(d for _, d in window)
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(f"loss is {values['loss']} at step {self.step}")
                self.history.append({"step": self.step, **values})
                if is_main_process() and self.step % cfg.log.every == 0:
                    self.metrics.log(self.step, values)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{values['loss']:.3f}", sps=f"{values['samples_per_s']:.1f}"
                    )
                    bar.update(1)
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
                    self._log_eval(self.evaluate())
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - t0
        if not cfg.checkpoint.every or self.step % cfg.checkpoint.every:
            self.save_checkpoint()
        if self.eval_results and self.eval_results[-1][0] == self.step:
            result = self.eval_results[-1][1]
        elif cfg.eval.at_end:
            result = self.evaluate()
            self._log_eval(result)
        else:
            result = None
        summary = self._finish(elapsed, self.step - start_step, result)
        return summary

    def _log_eval(self, result: dict[str, float] | None) -> None:
        if result is None or not is_main_process():
            return
        self.metrics.log(
            self.step,
            {f"eval/{k}": v for k, v in result.items() if "@" in k and k != "chance@1"}
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
        weights = self._model_state() if self.cfg.checkpoint.export_safetensors else None
        if is_main_process():
            if weights is not None:
                export_weights(
                    weights,
                    join_url(self.ckpt_dir, "model.safetensors"),
                    self.model_spec,
                )
            self.metrics.close()
            hist = self.history
            n = max(1, min(10, len(hist) // 5))
            first = {
                k: sum(h[k] for h in hist[:n]) / n for k in self.columns if hist and k in hist[0]
            }
            last = {
                k: sum(h[k] for h in hist[-n:]) / n for k in self.columns if hist and k in hist[-1]
            }
            summary["first"], summary["last"] = first, last
            self.print(
                f"trained {steps} steps in {elapsed:.0f}s; losses (mean of first/last {n} steps):"
            )
            for k in first:
                arrow = "down" if last.get(k, math.inf) < first[k] else "NOT down"
                self.print(
                    f"  {k:<22} {first[k]:8.4f} -> {last.get(k, float('nan')):8.4f}  ({arrow})"
                )
            if self.cfg.log.plot:
                from xfm.train.plot import plot_run

                png = plot_run(self.run_dir)
                summary["plot"] = str(png)
                self.print(f"loss curves: {png}")
            self.print(f"checkpoints: {self.ckpt_dir}")
        barrier()
        return summary

    def close(self) -> None:
        """Stop loader workers and leave the process group."""
        with contextlib.suppress(Exception):
            self.loader.close()
        if is_distributed():
            barrier()
            torch.distributed.destroy_process_group()
