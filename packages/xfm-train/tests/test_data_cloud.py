"""Write with the writers to S3 (moto server) and GCS (emulator), read back the same samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from xfm.train.data import (
    DataSourceError,
    ImageTextWriter,
    LoaderConfig,
    SourceConfig,
    SourceDataset,
    SourceLoader,
    TextWriter,
)

pytestmark = pytest.mark.cloud


def _pairs(synth_dir: Path) -> list[dict]:
    """(image bytes, caption) pairs of the test split, from the builder's files on disk."""
    import json

    ann = json.loads((synth_dir / "annotations/test.json").read_text())
    return [
        {
            "id": f"p{i}",
            "image": (synth_dir / a["image"]).read_bytes(),
            "caption": a["caption"],
            "image_id": a["image_id"],
        }
        for i, a in enumerate(ann)
    ]


def _round_trip(url: str, synth_dir: Path, cache: Path) -> None:
    pairs = _pairs(synth_dir)
    with ImageTextWriter(url, compression="zstd", size_limit=1 << 14) as w:
        for p in pairs:
            w.write(p["image"], p["caption"], image_id=p["image_id"], id=p["id"])
    assert w.summary.written == len(pairs)
    ld = SourceLoader(
        "image_text",
        SourceConfig(url, 16, shuffle=False),
        LoaderConfig(cache_dir=str(cache), cache_limit="10mb"),
    )
    got = []
    while len(got) < len(pairs):
        got += ld.next_batch()
    assert [{k: g[k] for k in ("id", "image", "caption", "image_id")} for g in got] == pairs
    assert len(ld.dataset.shards) > 1  # several shards went through the cache
    assert any(cache.rglob("shard.*.mds"))  # decompressed into the cache
    ld.close()


def test_s3_round_trip(moto_s3, synth_dir: Path, tmp_path: Path):
    _round_trip(moto_s3.url("pairs"), synth_dir, tmp_path / "cache")


def test_gcs_round_trip(gcs_emulator, synth_dir: Path, tmp_path: Path):
    _round_trip(gcs_emulator.url("pairs"), synth_dir, tmp_path / "cache")


def test_s3_wrong_bucket_names_the_url(moto_s3, tmp_path: Path):
    url = "s3://no-such-bucket-xfm/data"
    with pytest.raises(DataSourceError) as err:
        SourceDataset("text", url, batch_size=1, cache_dir=tmp_path)
    assert url in str(err.value)
    with pytest.raises(DataSourceError, match="no-such-bucket-xfm"):
        TextWriter(url)


def test_s3_missing_index_names_the_url(moto_s3, tmp_path: Path):
    url = moto_s3.url("empty")
    with pytest.raises(DataSourceError, match=r"index\.json") as err:
        SourceDataset("text", url, batch_size=1, cache_dir=tmp_path)
    assert url in str(err.value)


def test_s3_missing_credentials_names_the_url(moto_s3, tmp_path: Path, monkeypatch):
    url = moto_s3.url("text")
    with TextWriter(url) as w:
        w.write("hello", id="0")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DataSourceError, match="credentials") as err:
        SourceDataset("text", url, batch_size=1, cache_dir=tmp_path)
    assert url in str(err.value)


def test_gcs_wrong_bucket_names_the_url(gcs_emulator, tmp_path: Path):
    url = "gs://no-such-bucket-xfm/data"
    with pytest.raises(DataSourceError) as err:
        SourceDataset("text", url, batch_size=1, cache_dir=tmp_path)
    assert url in str(err.value)
