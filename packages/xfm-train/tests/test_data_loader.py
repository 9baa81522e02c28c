"""Loading: local round trip, determinism, exact resume in a new process, bad samples."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xfm.train.data import (
    DataSourceError,
    ImageBatch,
    ImageProcessor,
    ImageWriter,
    LoaderConfig,
    MultiSourceLoader,
    ProcessConfig,
    SourceConfig,
    SourceDataset,
    SourceLoader,
    TooManyBadSamplesError,
)
from xfm.train.data.schemas import SCHEMAS

SCRIPT = Path(__file__).parent / "data_scripts" / "run_loader.py"


def _run_script(cfg: dict, tmp: Path, name: str) -> dict:
    cfg_path = tmp / f"{name}.cfg.json"
    out = tmp / f"{name}.out.json"
    cfg_path.write_text(json.dumps(cfg))
    subprocess.run([sys.executable, str(SCRIPT), str(cfg_path), str(out)], check=True, timeout=300)
    return json.loads(out.read_text())


def _raw(url: str) -> list[dict]:
    ds = SourceDataset("image", url, shuffle=False, batch_size=1)
    return [ds[i] for i in range(ds.num_samples)]


def test_local_round_trip_matches_rendered_images(synth_dir: Path):
    """Every image sample read back equals the PNG file the dataset builder wrote."""
    rows = _raw(str(synth_dir / "mds/image/train"))
    assert len(rows) == 48
    for row in rows:
        split, idx = row["id"].split("-")
        assert row["image"] == (synth_dir / f"images/{split}/{idx}.png").read_bytes()


def test_image_batches_have_documented_shapes(synth_dir: Path):
    pc = ProcessConfig(image_size=32, patch_size=8, mim_ratio=0.5, seed=1)
    ld = SourceLoader(
        "image", SourceConfig(str(synth_dir / "mds/image/train"), 6), processor=ImageProcessor(pc)
    )
    batch = ld.next_batch()
    assert isinstance(batch, ImageBatch)
    assert batch.image.shape == (6, 3, 32, 32) and batch.image.dtype == torch.float32
    assert batch.image_mask.shape == (6, 16) and batch.image_mask.dtype == torch.bool
    assert batch.image_mask.sum(1).tolist() == [8] * 6  # exactly mim_ratio * N patches
    # Independent reference for the pixels: PIL resize of the stored PNG, normalised.
    key = batch.keys[0]
    png = Image.open(synth_dir / f"images/train/{key.split('-')[1]}.png").convert("RGB")
    ref = torch.from_numpy(np.asarray(png.resize((32, 32), 3), dtype=np.float32) / 255)
    ref = (ref.permute(2, 0, 1) - torch.tensor(pc.mean)[:, None, None]) / torch.tensor(pc.std)[
        :, None, None
    ]
    torch.testing.assert_close(batch.image[0], ref)
    ld.close()


def _keys(loader: MultiSourceLoader, steps: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {s: [] for s in loader.sources}
    for step in itertools.islice(loader, steps):
        for name, batch in step.items():
            out[name] += [s["id"] for s in batch] if isinstance(batch, list) else batch.keys
    return out


def test_shuffle_is_deterministic_from_seed_and_covers_epochs(synth_dir: Path):
    url = str(synth_dir / "mds/text/train")
    a = _keys(MultiSourceLoader({"text": SourceConfig(url, 8)}, LoaderConfig(seed=3)), 16)["text"]
    b = _keys(MultiSourceLoader({"text": SourceConfig(url, 8)}, LoaderConfig(seed=3)), 16)["text"]
    c = _keys(MultiSourceLoader({"text": SourceConfig(url, 8)}, LoaderConfig(seed=4)), 16)["text"]
    assert a == b and a != c
    # 64 documents, 8 per batch: two full epochs, each a permutation of all documents.
    assert sorted(a[:64]) == sorted(a[64:]) == sorted(f"train-text-{i:06d}" for i in range(64))
    assert a[:64] != a[64:]  # each epoch is shuffled anew


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_in_new_process(synth_dir: Path, tmp_path: Path, num_workers: int):
    """k steps, save, rebuild in a new process, continue == one uninterrupted run."""
    sources = {
        "text": {"url": str(synth_dir / "mds/text/train"), "batch_size": 7},
        "image": {"url": str(synth_dir / "mds/image/train"), "batch_size": 5},
    }
    base = {"sources": sources, "seed": 11, "num_workers": num_workers}
    full = _run_script({**base, "steps": 14}, tmp_path, "full")
    state = tmp_path / "state.json"
    first = _run_script({**base, "steps": 6, "save_state": str(state)}, tmp_path, "first")
    second = _run_script({**base, "steps": 8, "load_state": str(state)}, tmp_path, "second")
    for name in sources:
        assert first["keys"][name] + second["keys"][name] == full["keys"][name], name
    # 14 steps of 5 images cross the 48-image epoch boundary.
    assert len(full["keys"]["image"]) > 48
    assert first["masks"] + second["masks"] == full["masks"]  # masks resume exactly too


def test_workers_do_not_change_the_order(synth_dir: Path):
    url = str(synth_dir / "mds/image/train")
    pc = ProcessConfig(image_size=32, patch_size=8)
    runs = []
    for nw in (0, 2):
        ml = MultiSourceLoader(
            {"image": SourceConfig(url, 4)},
            LoaderConfig(num_workers=nw),
            {"image": ImageProcessor(pc)},
        )
        runs.append(_keys(ml, 6)["image"])
        ml.close()
    assert runs[0] == runs[1]


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _write_with_bad(out: Path, n: int, bad: set[int]) -> None:
    with ImageWriter(str(out)) as w:
        for i in range(n):
            if i in bad:
                kind = i % 3
                if kind == 0:  # corrupt image bytes
                    w.write_unchecked({"id": f"s{i}", "image": b"\x89PNG garbage", "label": 0})
                elif kind == 1:  # truncated image
                    w.write_unchecked({"id": f"s{i}", "image": _png((9, 9, 9))[:40], "label": 0})
                else:  # empty image field
                    w.write_unchecked({"id": f"s{i}", "image": b"", "label": 0})
            else:
                w.write(_png((i, 0, 0)), id=f"s{i}", label=i % 4)


def test_bad_samples_are_skipped_counted_and_logged(tmp_path: Path, caplog):
    out = tmp_path / "bad"
    bad = {3, 10, 17}
    _write_with_bad(out, 40, bad)
    pc = ProcessConfig(image_size=16, patch_size=8)
    ld = SourceLoader(
        "image",
        SourceConfig(str(out), 8, shuffle=False),
        LoaderConfig(max_bad_fraction=0.2, min_samples_for_bad_check=8, log_bad_every_s=0.0),
        processor=ImageProcessor(pc),
    )
    seen, skipped = [], []
    with caplog.at_level("WARNING", logger="xfm.train.data"):
        for _ in range(5):
            batch = ld.next_batch()
            seen += batch.keys
            skipped += batch.skipped
    assert sorted(seen) == sorted(f"s{i}" for i in range(40) if i not in bad)
    assert sorted(s.sample_id for s in skipped) == sorted(bad)
    assert all(s.shard == "shard.00000.mds" and s.index == s.sample_id for s in skipped)
    assert ld.bad_samples == (3, 40)
    assert ld.state_dict()["sample_in_epoch"] == 40  # bad samples still count as consumed
    assert "corrupt image" in caplog.text and "shard shard.00000.mds, index 3" in caplog.text
    ld.close()


def test_bad_sample_counts_survive_the_loader_state(tmp_path: Path):
    """The counts are part of the state: a loader resumed from it continues them (and the
    reasons), so ``max_bad_fraction`` and the reported totals cover the whole run."""
    out = tmp_path / "bad"
    _write_with_bad(out, 40, {3, 10, 30, 31})  # 2 in the first 16 samples, 4 in all

    def loader() -> SourceLoader:
        return SourceLoader(
            "image",
            SourceConfig(str(out), 8, shuffle=False),
            LoaderConfig(max_bad_fraction=0.5, min_samples_for_bad_check=8),
            processor=ImageProcessor(ProcessConfig(image_size=16, patch_size=8)),
        )

    first = loader()
    first.next_batch(), first.next_batch()
    state = first.state_dict()
    first.close()
    assert state["bad_samples"] == {"bad": 2, "read": 16, "reasons": {"BadSampleError": 2}}
    again = loader()
    again.load_state_dict(state)
    assert again.bad_samples == (2, 16)
    for _ in range(3):
        again.next_batch()
    assert again.bad_samples == (4, 40)
    again.close()
    old = {k: v for k, v in state.items() if k != "bad_samples"}  # a state of before
    older = loader()
    older.load_state_dict(old)
    assert older.bad_samples == (0, 0)
    older.close()


def test_too_many_bad_samples_raise_clear_error(tmp_path: Path):
    out = tmp_path / "bad"
    _write_with_bad(out, 32, set(range(0, 32, 4)))  # 25% bad
    ld = SourceLoader(
        "image",
        SourceConfig(str(out), 8, shuffle=False),
        LoaderConfig(max_bad_fraction=0.1, min_samples_for_bad_check=16),
        processor=ImageProcessor(ProcessConfig(image_size=16, patch_size=8)),
    )
    ld.next_batch()  # 8 read: below the minimum, no check yet
    with pytest.raises(TooManyBadSamplesError, match=r"4 of 16 samples read were bad .*max_bad"):
        ld.next_batch()
    ld.close()


def test_missing_index_names_the_path(tmp_path: Path):
    with pytest.raises(DataSourceError, match=r"no index.json") as err:
        SourceDataset("image", str(tmp_path), batch_size=1)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(DataSourceError, match="no such folder"):
        SourceDataset("image", str(tmp_path / "nope"), batch_size=1)


def test_wrong_schema_is_refused(synth_dir: Path):
    with pytest.raises(DataSourceError, match=r"lack \['caption', 'image_id'\]"):
        SourceDataset("image_text", str(synth_dir / "mds/image/train"), batch_size=1)


def test_schema_validation_messages():
    schema = SCHEMAS["image_text"]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['caption'\]"):
        schema.validate({"id": "a", "image": b"x", "image_id": "1"})
    with pytest.raises(ValueError, match="'caption' is empty"):
        schema.validate({"id": "a", "image": b"x", "image_id": "1", "caption": "  "})
    with pytest.raises(ValueError, match="'image' must be bytes, got str"):
        schema.validate({"id": "a", "image": "x", "image_id": "1", "caption": "c"})
    with pytest.raises(ValueError, match="no area"):
        SCHEMAS["region"].validate(
            {
                "id": "a",
                "image": b"x",
                "image_id": "1",
                "caption": "c",
                "box": [0, 0, 0, 5],
                "width": 9,
                "height": 9,
            }
        )


def test_resume_refuses_another_num_canonical_nodes(synth_dir: Path):
    """The loader state records ``num_canonical_nodes`` (the epoch's order depends on it, not
    on the number of ranks); resuming with another value is refused, naming the setting."""
    url = str(synth_dir / "mds" / "image_text" / "train")
    first = SourceLoader("image_text", SourceConfig(url, 4), LoaderConfig(seed=2))
    first.next_batch()
    state = first.state_dict()
    first.release()
    assert state["num_canonical_nodes"] == 1 and state["sample_in_epoch"] == 4
    other = SourceLoader(
        "image_text", SourceConfig(url, 4), LoaderConfig(seed=2, num_canonical_nodes=2)
    )
    with pytest.raises(ValueError, match=r"num_canonical_nodes 1.*num_canonical_nodes=1"):
        other.load_state_dict(state)
    older = {k: v for k, v in state.items() if k != "num_canonical_nodes"}  # a state of before
    other.load_state_dict(older)
    assert other.sample_in_epoch == 4
    other.release()
