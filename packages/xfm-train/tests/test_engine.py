"""The training engine's parts on their own: the resumable map-style loader, the staged
backward driven by the engine, accumulation, precision and unwrapping."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from xfm.train.engine import EpochLoader, Stepper, autocast_factory, unwrap, wrap


def _collate(items: list[int]) -> torch.Tensor:
    return torch.tensor(items)


def test_epoch_loader_order_is_a_plain_shuffled_dataloader() -> None:
    """Epoch after epoch, the batches of a ``DataLoader`` over a seeded ``RandomSampler``
    (what fine-tuning used before the engine: runs keep their data order)."""
    data = list(range(23))
    gen = torch.Generator().manual_seed(7)
    plain = DataLoader(data, 4, sampler=RandomSampler(data, generator=gen), drop_last=True)
    expected = [b.tolist() for _ in range(3) for b in plain]
    loader = EpochLoader(data, 4, _collate, seed=7)
    assert [loader.next().tolist() for _ in range(len(expected))] == expected
    assert loader.epoch == 2 and loader.batch_in_epoch == 5


@pytest.mark.parametrize("taken", [0, 3, 5, 6, 13])
def test_epoch_loader_resumes_at_any_batch(taken: int) -> None:
    """A new loader given the state after ``taken`` batches (mid-epoch, at an epoch's end,
    in a later epoch) continues with exactly the batches of the uninterrupted loader."""
    data = list(range(23))
    ref = EpochLoader(data, 4, _collate, seed=3)
    full = [ref.next().tolist() for _ in range(taken + 8)]
    first = EpochLoader(data, 4, _collate, seed=3)
    for _ in range(taken):
        first.next()
    state = first.state_dict()
    torch.manual_seed(123)  # the global RNG at resume time plays no part
    again = EpochLoader(data, 4, _collate, seed=3)
    again.load_state_dict(state)
    assert [again.next().tolist() for _ in range(8)] == full[taken:]
    other = EpochLoader(data, 8, _collate, seed=3)
    with pytest.raises(ValueError, match="batch_size 4, this run has 8"):
        other.load_state_dict(state)


@dataclass
class _Stage:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


class _TwoStageLoss(nn.Module):
    """``(w·x)^2`` then ``sum(w)``: a stage loss generator that never calls ``backward``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        self.grad_seen_by_stage2: torch.Tensor | None = None

    def stages(self, x: torch.Tensor) -> Iterator[_Stage]:
        a = (self.w * x).sum() ** 2
        yield _Stage(a, {"a": a.detach()})
        # the engine has back-propagated stage 1 before asking for stage 2
        self.grad_seen_by_stage2 = None if self.w.grad is None else self.w.grad.clone()
        b = self.w.sum()
        yield _Stage(b, {"b": b.detach()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a, b = (self.w * x).sum() ** 2, self.w.sum()
        return a + b, {"a": a.detach(), "b": b.detach()}


def _one_step(staged: bool, accumulate: int = 1) -> tuple[_TwoStageLoss, torch.Tensor, dict]:
    module = _TwoStageLoss()
    wrapped = wrap(module, torch.device("cpu"), "none")
    assert wrapped.staged and wrapped.forward is module
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stepper = Stepper(
        wrapped, opt, sched, autocast_factory(torch.device("cpu"), "fp32"), accumulate=accumulate
    )
    xs = iter([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, -1.0])])
    before = module.w.detach().clone()
    result = stepper.step(lambda: (next(xs), 1), module, module.stages if staged else None)
    return module, before - module.w.detach(), {"loss": result.loss, **result.parts}


def test_staged_backward_is_driven_by_the_engine_and_equals_one_backward() -> None:
    staged, grad_staged, values = _one_step(staged=True)
    _, grad_whole, values_whole = _one_step(staged=False)
    x = torch.tensor([1.0, 2.0, 3.0])
    w = torch.tensor([1.0, -2.0, 0.5])
    expected_a = 2 * (w * x).sum() * x  # d/dw (w·x)^2
    torch.testing.assert_close(staged.grad_seen_by_stage2, expected_a)  # stage 1 done first
    torch.testing.assert_close(grad_staged, expected_a + 1)  # SGD lr 1: the step = -grad
    torch.testing.assert_close(grad_whole, grad_staged)
    assert values == values_whole == {"loss": 1.5**2 - 0.5, "a": 1.5**2, "b": -0.5}


def test_accumulation_averages_the_micro_steps() -> None:
    _, step, values = _one_step(staged=True, accumulate=2)
    w = torch.tensor([1.0, -2.0, 0.5])
    g = [
        2 * (w * x).sum() * x + 1
        for x in (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, -1.0]))
    ]
    torch.testing.assert_close(step, (g[0] + g[1]) / 2)
    assert values["loss"] == pytest.approx((1.5**2 - 0.5 + 0.0**2 - 0.5) / 2)


def test_precision_and_unwrap() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        autocast_factory(cpu, "fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_factory(cpu, "fp8")
    with autocast_factory(cpu, "bf16")():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_factory(cpu, "fp32")():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    m = nn.Linear(2, 2)
    assert unwrap(m) is m and unwrap(torch.compile(m)) is m
    wrapped = wrap(m, cpu, "auto", compile=True)
    assert wrapped.mode == "none" and not wrapped.staged and unwrap(wrapped.forward) is m


def test_non_finite_loss_names_the_part(tmp_path) -> None:
    from xfm.train.engine import Engine, EngineSettings

    engine = Engine(EngineSettings(run_dir=str(tmp_path), steps=5, progress=False))
    saved = []

    def step() -> dict[str, float]:
        engine.step += 1
        bad = float("nan") if engine.step == 2 else 1.0
        return {"loss": bad + 1.0, "text/mlm": 1.0, "image/mim": bad, "lr": 0.1, "_samples": 4.0}

    with pytest.raises(FloatingPointError, match=r"non-finite loss image/mim = nan at step 2"):
        engine.fit(step, lambda: saved.append(engine.step))
    engine.close()
    assert saved == [] and [h["step"] for h in engine.history] == [1]


class _NanAt(nn.Module):
    """``sum(w·x)`` whose part ``"b"`` is NaN on call ``bad_call`` (1-based)."""

    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.calls += 1
        a = (self.w * x).sum()
        b = a * float("nan") if self.calls == self.bad_call else a * 0
        return a + b, {"a": a.detach(), "b": b.detach()}


def _nan_stepper(policy: str, bad_call: int, accumulate: int = 1):
    module = _NanAt(bad_call)
    wrapped = wrap(module, torch.device("cpu"), "none")
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    cpu = torch.device("cpu")
    stepper = Stepper(
        wrapped,
        opt,
        sched,
        autocast_factory(cpu, "fp32"),
        accumulate=accumulate,
        on_nonfinite=policy,
    )
    return module, opt, sched, stepper


def test_non_finite_stop_raises_before_backward_naming_the_part() -> None:
    from xfm.train.nonfinite import NonFiniteLossError

    module, _, _, stepper = _nan_stepper("stop", bad_call=1)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss b = nan$"):
        stepper.step(lambda: (torch.ones(2), 1), module)
    assert module.w.grad is None  # raised before the backward
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        _nan_stepper("ignore", 1)


def test_non_finite_skip_step_discards_the_step() -> None:
    """Accumulating 2: the NaN in the second micro-step of step 2 discards the gradient of its
    first micro-step too; no optimizer or schedule step; the next step is a normal one."""
    module, _opt, sched, stepper = _nan_stepper("skip_step", bad_call=4, accumulate=2)
    x = torch.tensor([1.0, 3.0])
    first = stepper.step(lambda: (x, 1), module)
    assert first.skipped is None and first.lr == 1.0
    w1 = module.w.detach().clone()
    torch.testing.assert_close(w1, torch.tensor([0.0, -1.0]))  # SGD lr 1, grad = x
    skipped = stepper.step(lambda: (x, 1), module)
    assert skipped.skipped is not None and skipped.skipped.name == "b"
    assert math.isnan(skipped.loss) and skipped.parts == {} and skipped.lr == 0.5
    assert module.w.grad is None and torch.equal(module.w.detach(), w1)
    assert sched.last_epoch == 1  # the schedule did not advance
    third = stepper.step(lambda: (x, 1), module)
    assert third.skipped is None and third.lr == 0.5
    torch.testing.assert_close(module.w.detach(), w1 - 0.5 * x)


def test_engine_counts_skipped_steps(tmp_path, caplog) -> None:
    from xfm.train.engine import Engine, EngineSettings
    from xfm.train.metrics import read_metrics

    settings = EngineSettings(
        run_dir=str(tmp_path), steps=4, progress=False, device="cpu", on_nonfinite="skip_step"
    )
    engine = Engine(settings)
    engine.start()
    module = _NanAt(bad_call=2)
    engine.prepare(
        module,
        module,
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0),
    )
    x = torch.tensor([1.0, 3.0])
    with caplog.at_level("WARNING", logger="xfm.train"):
        engine.fit(lambda: engine.train_step(lambda: (x, 1), engine.forward), lambda: None)
    engine.close()
    assert "non-finite loss b = nan at step 2" in caplog.text and "skipped" in caplog.text
    assert engine.skipped_steps == 1 and [h["step"] for h in engine.history] == [1, 3, 4]
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 1]
    # w0 = [1, 2], grad = x = [1, 3]: loss w0·x = 7; after step 1 (SGD 0.1) w·x = 7 - 0.1 * 10;
    # the skipped step 2 changed nothing, so step 3 sees the same weights
    assert rows[0]["loss"] == pytest.approx(7.0) and "loss" not in rows[1]
    assert rows[2]["loss"] == pytest.approx(6.0) and rows[3]["loss"] == pytest.approx(5.0)
