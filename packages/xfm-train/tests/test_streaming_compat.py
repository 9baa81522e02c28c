"""The mosaicml-streaming internals xfm relies on (``xfm.train.data.streaming_compat``) are
still there with the expected signatures: a streaming upgrade that changes one fails here."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from xfm.train.data import streaming_compat as compat
from xfm.train.data.dataset import SourceDataset
from xfm.train.data.writers import TextWriter


@pytest.fixture
def text_dataset(tmp_path: Path):
    out = tmp_path / "text"
    with TextWriter(str(out), size_limit=400) as writer:
        for i in range(12):
            writer.write(f"document number {i} of the compat check", id=f"doc-{i:02d}")
    ds = SourceDataset("text", str(out), shuffle=False, batch_size=4)
    try:
        yield ds
    finally:
        with contextlib.suppress(Exception):
            compat.release_shared_memory(ds)


STATE = {"num_canonical_nodes": 1, "shuffle_seed": 0, "initial_physical_nodes": None}


def test_the_installed_streaming_has_every_internal_xfm_uses(text_dataset) -> None:
    text_dataset.start_epoch(0, 0, STATE)
    assert len(list(text_dataset)) == 12
    assert compat.check_internals(text_dataset) == []


def test_the_accessors_read_what_the_writer_wrote(text_dataset) -> None:
    index = json.loads(Path(text_dataset.url, "index.json").read_text())
    shards = [(s["raw_data"]["basename"], s["samples"]) for s in index["shards"]]
    assert len(shards) > 1  # size_limit: several shards
    pairs = compat.shard_file_pairs(text_dataset)
    assert [raw for raw, _ in pairs] == [name for name, _ in shards]
    assert compat.column_names(text_dataset) == ["id", "text"]
    expected = [(k, name, i) for k, (name, n) in enumerate(shards) for i in range(n)]
    assert [compat.sample_location(text_dataset, j) for j in range(12)] == expected
    local, remote, first = compat.shard_stream(text_dataset, 0)
    assert remote is None and Path(local, first).is_file()
    assert compat.world_size() == 1
    assert compat.background_failed(text_dataset) is False


def test_start_epoch_sets_the_epoch_the_processors_see(text_dataset) -> None:
    text_dataset.start_epoch(3, 4, STATE)
    assert text_dataset.epoch == 3 and text_dataset.next_epoch == 3
    ids = [row["id"] for row in text_dataset]  # resumes after 4 samples of epoch 3
    assert ids == [f"doc-{i:02d}" for i in range(4, 12)]


@pytest.mark.parametrize(
    ("version", "ok"),
    [("0.13.0", True), ("0.13.7", True), ("0.12.9", False), ("0.14.0", False), ("1.0", False)],
)
def test_supported_version_range(version: str, ok: bool) -> None:
    assert compat.supported_version(version) is ok


def test_a_changed_internal_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a renamed parameter and a missing attribute are both named."""
    from streaming.base.dataset import StreamingDataset

    def prepare_shard(self, shard, blocking=True):  # renamed first parameter
        raise NotImplementedError

    monkeypatch.setattr(StreamingDataset, "prepare_shard", prepare_shard)
    problems = compat.check_internals(object())
    assert any(p.startswith("StreamingDataset.prepare_shard(") for p in problems)
    assert "StreamingDataset instances lack 'spanner'" in problems
