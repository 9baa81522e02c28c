"""The ``data_source`` registry: built-in sources are entry points, sources are looked up by
name everywhere (config, loader, writers, collate), and one registered in-process is written,
loaded and collated into its own batch type."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from xfm.core.registry import UnknownComponentError, entries, get_registry
from xfm.train.config import default_objectives
from xfm.train.data import (
    BadSample,
    Batch,
    DataSource,
    LoaderConfig,
    MultiSourceLoader,
    ProcessConfig,
    SampleProcessor,
    Schema,
    SourceConfig,
    get_source,
    open_writer,
    source_names,
)
from xfm.train.data.batches import ImageTextBatch
from xfm.train.data.sources import IMAGE, IMAGE_TEXT, REGION, TEXT, order_sources


def test_builtin_sources_are_xfm_train_entry_points() -> None:
    infos = {i.name: i for i in entries("data_source")}
    for source in (TEXT, IMAGE_TEXT, REGION, IMAGE):
        info = infos[source.name]
        assert info.distribution == "xfm-train"
        assert info.value == f"xfm.train.data.sources:{source.name.upper()}"
        assert get_source(source.name) is source
    assert get_source("image_text").batch_type is ImageTextBatch
    assert default_objectives("region") == {"itc": 1.0, "itm": 1.0, "fusion_mlm": 1.0, "bbox": 1.0}
    assert default_objectives("text") == {"text_mlm": 1.0}


def test_unknown_source_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownComponentError) as info:
        get_source("imagetext")
    message = str(info.value)
    assert "Did you mean 'image_text'" in message
    assert "'image', 'image_text', 'region', 'text'" in message


def test_a_data_source_is_checked_when_it_is_built_and_looked_up() -> None:
    with pytest.raises(ValueError, match="schema is that of source 'text'"):
        dataclasses.replace(TEXT, name="other")
    with pytest.raises(TypeError, match=r"subclass of xfm\.train\.data\.batches\.Batch"):
        dataclasses.replace(TEXT, batch_type=dict)
    reg = get_registry("data_source")
    reg.register("not_a_source", object())
    try:
        with pytest.raises(TypeError, match=r"not an xfm\.train\.data\.sources\.DataSource"):
            get_source("not_a_source")
    finally:
        reg.unregister("not_a_source")


# ------------------------------------------------------------------- an in-process source


@dataclass
class PairBatch(Batch):
    """``a``: ``[B, T]`` padded with -7; ``b``: ``[B, 2]``; ``n``: ``[B]``."""

    a: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    b: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2))
    n: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


class PairProcessor(SampleProcessor):
    source = "pairs_probe"

    def __call__(self, raw: dict[str, Any], sample_id: int, epoch: int) -> dict[str, Any]:
        self.check_columns(raw)
        n = int(raw["n"])
        if n < 0:
            raise ValueError("negative n")
        return {
            "index": sample_id,
            "key": raw["id"],
            "a": torch.arange(n + 1),
            "b": torch.tensor([float(n), 2.0 * n]),
            "n": n,
        }


PAIRS = DataSource(
    "pairs_probe",
    Schema("pairs_probe", {"id": "str", "n": "int"}, {"id": (str,), "n": (int,)}),
    PairProcessor,
    PairBatch,
    objectives={"probe_objective": 1.0},
    uses_tokenizer=False,
    padding={"a": -7},
)


@pytest.fixture
def pairs_source():
    reg = get_registry("data_source")
    reg.register("pairs_probe", PAIRS)
    try:
        yield PAIRS
    finally:
        reg.unregister("pairs_probe")


def test_collate_pads_the_declared_fields_and_stacks_the_rest(pairs_source) -> None:
    proc = PAIRS.build_processor(ProcessConfig())
    samples = [proc({"id": f"s{n}", "n": n}, n, 0) for n in (2, 0)]
    bad = BadSample("pairs_probe", 5, "shard.00000.mds", 5, "ValueError: negative n")
    batch = PAIRS.collate([samples[0], bad, samples[1]])
    assert isinstance(batch, PairBatch)
    assert batch.a.tolist() == [[0, 1, 2], [0, -7, -7]]
    assert batch.b.tolist() == [[2.0, 4.0], [0.0, 0.0]]
    assert batch.n.tolist() == [2, 0] and batch.keys == ["s2", "s0"]
    assert batch.num_raw == 3 and batch.skipped == [bad]


def test_order_puts_builtin_sources_first_in_spec_order(pairs_source) -> None:
    assert order_sources(["pairs_probe", "image", "text"]) == ["text", "image", "pairs_probe"]
    assert "pairs_probe" in source_names()


def test_an_in_process_source_is_written_and_loaded_by_name(pairs_source, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    with open_writer("pairs_probe", str(out)) as writer:
        assert type(writer).__name__ == "ShardWriter" and writer.source == "pairs_probe"
        for i in range(6):
            writer.write_sample({"id": f"p{i}", "n": i - 1})  # p0 is a bad sample (n = -1)
        assert not writer.write_sample({"id": "bad", "n": "three"})  # wrong type: skipped
    assert writer.summary.written == 6 and writer.summary.num_skipped == 1
    processors = {"pairs_probe": PAIRS.build_processor(ProcessConfig())}
    loader = MultiSourceLoader(
        {"pairs_probe": SourceConfig(str(out), 6, shuffle=False)},
        LoaderConfig(max_bad_fraction=0.5),
        processors,
    )
    try:
        batch = loader.next_step()["pairs_probe"]
    finally:
        loader.release()
    assert isinstance(batch, PairBatch)
    assert batch.keys == [f"p{i}" for i in range(1, 6)]
    assert [s.sample_id for s in batch.skipped] == [0]
    assert batch.n.tolist() == [0, 1, 2, 3, 4]
    assert batch.a[4].tolist() == [0, 1, 2, 3, 4] and batch.a[0].tolist() == [0, -7, -7, -7, -7]
