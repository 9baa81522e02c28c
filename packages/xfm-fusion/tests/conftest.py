"""Shared fixtures: the golden directory (official X-FM outputs for a tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

#: A copy of ``../shared/golden`` (tiny model in the official layout + official outputs), kept
#: in the repository so the tests run wherever the repository is checked out.
GOLDEN = Path(__file__).parent / "data" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    assert (GOLDEN / "config.json").is_file(), f"golden data missing at {GOLDEN}"
    return GOLDEN


@pytest.fixture(scope="session")
def golden_config(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "config.json").read_text())


@pytest.fixture(scope="session")
def golden_state(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "model.safetensors"))


@pytest.fixture(scope="session")
def golden_inputs(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "inputs.safetensors"))


@pytest.fixture(scope="session")
def golden_outputs(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "outputs.safetensors"))


@pytest.fixture(scope="session")
def golden_routing(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "gradient_routing.json").read_text())
