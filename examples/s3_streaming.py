"""Streaming pretraining from ``s3://``, killed mid-run with SIGKILL and resumed with ``--resume``.

What it shows, step by step:

1. ``xfm data synth`` renders the synthetic shapes world as MDS shards (local);
2. the shards are uploaded to ``s3://BUCKET/PREFIX/mds/...`` (boto3);
3. ``xfm pretrain`` trains ``configs/pretrain/tiny.yaml`` with every ``data.sources.*.url`` and
   the evaluation set on ``s3://`` (shards are streamed and cached under the run's work folder);
4. once a checkpoint exists the run is killed with SIGKILL (no chance to clean up);
5. ``xfm pretrain --resume`` continues from the newest checkpoint, and the example prints the
   per-step losses: the steps the killed run checkpointed stay, the resumed run continues from
   the checkpoint to the last step, every step exactly once. ``--reference`` also trains the
   same config uninterrupted and checks that the loss sequences are identical (CPU, fp32).

The S3 endpoint and credentials come from the standard variables: ``S3_ENDPOINT_URL`` (for an
S3-compatible store such as MinIO or a local ``moto_server``; unset for AWS),
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``. The bucket is created
when it does not exist. Try it against a local emulator::

    pip install ./packages/xfm-core ./packages/xfm-text ./packages/xfm-vision \
        ./packages/xfm-fusion "./packages/xfm-train[s3]" "moto[server]"
    moto_server -p 5000 &
    export S3_ENDPOINT_URL=http://127.0.0.1:5000 AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x \
        AWS_DEFAULT_REGION=us-east-1
    python examples/s3_streaming.py --bucket xfm-examples             # 150 steps, minutes
    python examples/s3_streaming.py --bucket xfm-examples --quick     # 12 steps, seconds (CI)
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pretrain" / "tiny.yaml"
XFM = [sys.executable, "-m", "xfm.core.cli"]  # the `xfm` command of this interpreter
SOURCES = ("text", "image_text", "region", "image")


def show(cmd: list[str]) -> None:
    """Echo ``cmd`` as the ``xfm`` command line it is."""
    shown = ["xfm", *cmd[len(XFM) :]] if cmd[: len(XFM)] == XFM else cmd
    print("$ " + " ".join(shown), flush=True)


def upload(folder: Path, bucket: str, prefix: str) -> int:
    """Upload every file under ``folder`` to ``s3://bucket/prefix/...``; returns the count."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None)
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return len(files)


def write_config(path: Path, *, url: str, work: Path, quick: bool) -> Path:
    """A config that starts from tiny.yaml and reads every source from ``url`` (``s3://``)."""
    steps, every = (12, 3) if quick else (150, 50)
    process = ["  process: {image_size: 32}"] if quick else []  # the quick set's 32 px
    lines = [
        f"base: {TINY}",
        f"run_dir: {work / 'run'}",
        f"steps: {steps}",
        "device: cpu",
        "data:",
        f"  synth: {{out: {work / 'synth'}, create: false}}  # only its tokenizer is used",
        f"  eval_url: {url}/mds/image_text/test",
        f"  loader: {{cache_dir: {work / 'cache'}, num_workers: {0 if quick else 1}}}",
        *process,
        "  sources:",
        *(f"    {s}: {{url: {url}/mds/{s}/train}}" for s in SOURCES),
        f"checkpoint: {{every: {every}, keep: 2}}",
        "eval: {every: 0}",
        "log: {tensorboard: false, plot: false, progress: false}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def loss_rows(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, loss)`` of every training row of ``run_dir/metrics.csv`` (evaluation rows,
    which have no loss, left out)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = csv.DictReader(f)
        return [(int(float(r["step"])), float(r["loss"])) for r in rows if r.get("loss")]


def train_and_kill(config: Path, run_dir: Path, at_step: int, timeout: float = 600) -> int:
    """Start ``xfm pretrain``, SIGKILL it once a checkpoint of step >= ``at_step`` exists;
    return the step of the newest checkpoint."""
    cmd = [*XFM, "pretrain", "--config", str(config), "--overwrite"]
    show(cmd)
    log = run_dir.parent / "killed_run.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if latest.is_file() and int(latest.read_text().strip()[5:13] or 0) >= at_step:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        out = log.read_text()[-3000:]
        raise SystemExit(
            f"error: the run ended (exit {proc.returncode}) before it was killed:\n{out}"
        )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    step = int(latest.read_text().strip()[5:13])
    print(f"killed the run with SIGKILL (exit {proc.returncode}); newest checkpoint: step {step}")
    return step


def main(argv: list[str] | None = None) -> int:
    """Synth -> S3 -> pretrain -> SIGKILL -> resume; print how the losses continued."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", default="xfm-examples", help="S3 bucket (created if missing)")
    parser.add_argument("--prefix", default=None, help="key prefix (default: a fresh one)")
    parser.add_argument("--quick", action="store_true", help="small data, 12 steps (CI)")
    parser.add_argument(
        "--reference", action="store_true", help="also train uninterrupted; compare"
    )
    parser.add_argument("--work", type=Path, default=None, help="local work folder")
    args = parser.parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="xfm-s3-"))).resolve()
    prefix = args.prefix or f"shapes-{uuid.uuid4().hex[:8]}"
    url = f"s3://{args.bucket}/{prefix}"
    print(f"S3 endpoint: {os.environ.get('S3_ENDPOINT_URL') or 'AWS'}; data: {url}")

    # 1-2. synthetic MDS shards, uploaded
    sizes = ["--image-size", "32", "--num-train", "48", "--num-test", "16", "--num-text", "64",
             "--vocab-size", "300"] if args.quick else []  # fmt: skip
    cmd = [*XFM, "data", "synth", "--out", str(work / "synth"), "--quiet", *sizes]
    show(cmd)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    try:
        import botocore.exceptions

        count = upload(work / "synth" / "mds", args.bucket, f"{prefix}/mds")
    except ImportError:
        print("error: boto3 is needed: pip install './packages/xfm-train[s3]'", file=sys.stderr)
        return 2
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        print(f"error: cannot upload to s3://{args.bucket}: {err}", file=sys.stderr)
        return 2
    print(f"uploaded {count} files of MDS shards to {url}/mds")

    # 3-4. pretrain from s3://, killed after a checkpoint
    config = write_config(work / "s3.yaml", url=url, work=work, quick=args.quick)
    run_dir = work / "run"
    kill_at = 6 if args.quick else 50
    step = train_and_kill(config, run_dir, kill_at)
    before = loss_rows(run_dir)
    print(f"the killed run logged steps {before[0][0]}..{before[-1][0]}")

    # 5. resume
    cmd = [*XFM, "pretrain", "--config", str(config), "--resume"]
    show(cmd)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        return proc.returncode
    print(next(line for line in proc.stdout.splitlines() if "resumed from" in line))
    after = loss_rows(run_dir)
    last = after[-1][0]
    for s, loss in after:  # the first and last steps and those around the checkpoint
        if s <= 3 or abs(s - step - 0.5) < 3 or s > last - 3:
            origin = "killed run" if s <= step else "resumed run"
            print(f"  step {s:>4}  loss {loss:.4f}  ({origin})")
        elif s in (4, step + 4):
            print("  ...")
    steps = [s for s, _ in after]
    continued = steps == list(range(1, len(steps) + 1)) and after[:step] == before[:step]
    print(
        f"loss sequence continued: {'yes' if continued else 'NO'} (steps 1..{step} from the "
        f"checkpointed run, {step + 1}..{steps[-1]} after --resume, each step once)"
    )
    if not continued:
        return 1

    if args.reference:  # the same config, never interrupted: the same losses, bit for bit
        ref_config = work / "s3_reference.yaml"
        ref_config.write_text(config.read_text().replace(str(run_dir), str(work / "reference")))
        cmd = [*XFM, "pretrain", "--config", str(ref_config), "--overwrite"]
        show(cmd)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        same = loss_rows(work / "reference") == after
        print(f"identical to an uninterrupted run: {'yes' if same else 'NO'}")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
