"""Loader throughput: image-text samples/s (decode + transform + tokenize + mask) and raw MDS reads.

    python tools/bench/loader.py [--image-size 224] [--batch-size 32] [--batches 20]
                                 [--workers 0 1 2] [--no-s3]

Builds a shapes-world dataset rendered at ``--image-size`` in a temporary folder, writes its
image-text shards also to S3 through a local ``moto_server`` (unless ``--no-s3``), and prints
a table of samples/s per (storage, workers) plus the raw MDS read speed. The first batch of each
run (worker start-up, first shard download) is not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xfm.train.data import (
    ImageTextWriter,
    LoaderConfig,
    ProcessConfig,
    SourceConfig,
    SourceDataset,
    build_loader,
)
from xfm.train.data.synth import SynthConfig, build_synthetic


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto() -> object:
    exe = Path(sys.executable).parent / "moto_server"
    port = _free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            time.sleep(0.1)
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        )
        import boto3

        boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"]).create_bucket(Bucket="bench")
        yield "s3://bench"
    finally:
        proc.terminate()
        proc.wait(10)


def time_loader(url: str, tok: str, args: argparse.Namespace, workers: int, cache: str) -> float:
    pc = ProcessConfig(tokenizer=tok, image_size=args.image_size, patch_size=16)
    lc = LoaderConfig(num_workers=workers, cache_dir=cache, seed=0)
    loader = build_loader({"image_text": SourceConfig(url, args.batch_size)}, lc, pc)
    loader.next_step()  # warm-up: workers, first shard
    n, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        n += len(loader.next_step()["image_text"])
    dt = time.perf_counter() - t0
    loader.close()
    return n / dt


def time_raw(url: str, cache: str) -> tuple[float, float]:
    ds = SourceDataset("image_text", url, shuffle=False, batch_size=64, cache_dir=cache)
    t0 = time.perf_counter()
    nbytes = 0
    for i in range(ds.num_samples):
        nbytes += len(ds[i]["image"])
    dt = time.perf_counter() - t0
    return ds.num_samples / dt, nbytes / dt / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-images", type=int, default=600)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xfm-bench-"))
    cfg = SynthConfig(
        image_size=args.image_size,
        num_train=args.num_images,
        num_test=2,
        num_text=2,
        captions_per_image=2,
    )
    build_synthetic(tmp / "synth", cfg, progress=False)
    local = str(tmp / "synth/mds/image_text/train")
    tok = str(tmp / "synth/tokenizer")
    print(
        f"image-text, {args.image_size}px, batch {args.batch_size}, {args.batches} timed batches,"
        f" {os.cpu_count()} CPUs"
    )
    rows = []
    stores = [("local", local)]
    with contextlib.ExitStack() as stack:
        if not args.no_s3:
            bucket = stack.enter_context(moto())
            url = f"{bucket}/image_text"
            with ImageTextWriter(url, compression="zstd") as w:
                ds = SourceDataset("image_text", local, shuffle=False, batch_size=1)
                for i in range(ds.num_samples):
                    s = ds[i]
                    w.write(s["image"], s["caption"], s["image_id"], s["id"])
            stores.append(("s3 (moto)", url))
        for name, url in stores:
            for workers in args.workers:
                cache = tempfile.mkdtemp(dir=tmp)
                rows.append((name, workers, time_loader(url, tok, args, workers, cache)))
                print(f"  {name:10s} workers={workers}: {rows[-1][2]:8.1f} samples/s", flush=True)
        for name, url in stores:
            sps, mbs = time_raw(url, tempfile.mkdtemp(dir=tmp))
            print(
                f"  raw MDS read {name:10s}: {sps:9.0f} samples/s ({mbs:.1f} MiB/s of image bytes)"
            )


if __name__ == "__main__":
    main()
