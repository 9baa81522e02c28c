"""Checkpoint reading/writing: formats, nesting, corruption, fsspec URLs, S3 (moto), atomicity."""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import fsspec
import pytest
import safetensors.torch
import torch

from xfm.core.checkpoint import (
    CheckpointError,
    atomic_save_bytes,
    atomic_write,
    load_state_dict,
    read_safetensors_metadata,
    save_state_dict,
)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "layers.0.attn.qkv.weight": torch.randn(12, 4, generator=g),
        "layers.0.attn.qkv.bias": torch.randn(12, generator=g),
        "embed.weight": torch.randn(7, 4, generator=g).half(),
        "norm.weight": torch.randn(4, generator=g).bfloat16(),
        "position_ids": torch.arange(7),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(0.07),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def _memory_url(name: str) -> str:
    return f"memory://xfm-tests/{uuid.uuid4().hex}/{name}"


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "model.bin"])
def test_local_round_trip(tmp_path: Path, name: str) -> None:
    state = _state()
    save_state_dict(state, tmp_path / name)
    loaded = load_state_dict(tmp_path / name)
    _assert_same(state, loaded)
    assert all(t.device.type == "cpu" for t in loaded.values())


def test_format_is_read_from_the_content_not_the_name(tmp_path: Path) -> None:
    state = _state()
    # safetensors bytes under a torch-like name, torch bytes under a neutral name
    atomic_save_bytes(safetensors.torch.save(state), tmp_path / "weights.bin")
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "weights.ckpt").write_bytes(buf.getvalue())
    _assert_same(state, load_state_dict(tmp_path / "weights.bin"))
    _assert_same(state, load_state_dict(str(tmp_path / "weights.ckpt")))


def test_files_written_by_the_reference_libraries_load(tmp_path: Path) -> None:
    state = _state()
    safetensors.torch.save_file(state, tmp_path / "a.safetensors")
    torch.save(state, tmp_path / "a.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("a.safetensors", "a.pt", "legacy.pt"):
        _assert_same(state, load_state_dict(tmp_path / name))


def test_saved_files_load_with_the_reference_libraries(tmp_path: Path) -> None:
    state = _state()
    save_state_dict(state, tmp_path / "a.safetensors", metadata={"format": "pt", "step": "3"})
    save_state_dict(state, tmp_path / "a.pt")
    _assert_same(state, safetensors.torch.load_file(tmp_path / "a.safetensors"))
    _assert_same(state, torch.load(tmp_path / "a.pt", weights_only=True))
    assert read_safetensors_metadata(tmp_path / "a.safetensors") == {"format": "pt", "step": "3"}


def test_tied_views_and_non_contiguous_tensors_save_to_safetensors(tmp_path: Path) -> None:
    base = torch.randn(6, 4)
    state = {
        "embed.weight": base,
        "decoder.weight": base,  # tied: same storage
        "head.weight": base[:3],  # view into the same storage
        "transposed": base.t(),  # non-contiguous
    }
    with pytest.raises(RuntimeError):  # what safetensors itself does with such a dict
        safetensors.torch.save_file(state, tmp_path / "raw.safetensors")
    save_state_dict(state, tmp_path / "tied.safetensors")
    loaded = load_state_dict(tmp_path / "tied.safetensors")
    _assert_same({k: v.contiguous() for k, v in state.items()}, loaded)
    assert base.data_ptr() == state["embed.weight"].data_ptr()  # caller's tensors untouched


def test_nested_model_key_is_found(tmp_path: Path) -> None:
    state = _state()
    ckpt = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "epoch": 3,
        "config": {"lr": 1e-4, "name": "xfm"},
    }
    torch.save(ckpt, tmp_path / "official.pth")
    _assert_same(state, load_state_dict(tmp_path / "official.pth"))
    _assert_same(state, load_state_dict(tmp_path / "official.pth", key="model"))
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "lightning.ckpt")
    _assert_same(state, load_state_dict(tmp_path / "lightning.ckpt"))


def test_unknown_or_wrong_key_errors_list_the_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": _state(), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"key 'ema' not found.*'model' \(dict\).*'epoch'"):
        load_state_dict(path, key="ema")
    with pytest.raises(CheckpointError, match=r"'epoch' does not hold a dict of tensors"):
        load_state_dict(path, key="epoch")
    torch.save({"weights": _state(), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"cannot find the weights.*'weights' \(dict\)"):
        load_state_dict(path)
    torch.save({"model": _state(), "state_dict": _state()}, path)
    with pytest.raises(CheckpointError, match=r"several entries.*'model', 'state_dict'.*key="):
        load_state_dict(path)
    torch.save([torch.ones(1)], path)
    with pytest.raises(CheckpointError, match=r"expected a dict of tensors.*list"):
        load_state_dict(path)


def test_key_is_rejected_for_safetensors(tmp_path: Path) -> None:
    save_state_dict(_state(), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="flat dict"):
        load_state_dict(tmp_path / "a.safetensors", key="model")


_MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"xfm-unsafe-{os.getpid()}"


def _side_effect(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class _Unsafe:
    """Unpickling this runs ``_side_effect``; weights_only must refuse it."""

    def __reduce__(self):
        return (_side_effect, (str(_MARKER),))


def test_pickle_with_python_objects_is_refused_without_running_them(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"model": _state(), "hook": _Unsafe()}, path)
    _MARKER.unlink(missing_ok=True)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert str(path) in message
    assert "weights_only" in message
    assert "_side_effect" in message  # names the offending global
    assert not _MARKER.exists()


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -10])
def test_truncated_safetensors_is_reported(tmp_path: Path, keep: int) -> None:
    data = safetensors.torch.save(_state())
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert str(path) in str(info.value)
    assert "truncated" in str(info.value) or "unrecognised" in str(info.value)


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.9, 0.99])
def test_truncated_torch_file_is_reported(tmp_path: Path, fraction: float, zipped: bool) -> None:
    buf = io.BytesIO()
    torch.save(_state(), buf, _use_new_zipfile_serialization=zipped)
    data = buf.getvalue()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=r"corrupt or truncated torch checkpoint") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)


def test_garbage_and_empty_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"hello, this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint format.*safetensors"):
        load_state_dict(tmp_path / "x.bin")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_state_dict(tmp_path / "empty.pt")
    header = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'  # no closing brace
    (tmp_path / "bad.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + b"0" * 8
    )
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_state_dict(tmp_path / "bad.safetensors")


def test_missing_file_names_the_location(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.safetensors"):
        load_state_dict(tmp_path / "nothing.safetensors")
    url = _memory_url("nothing.pt")
    with pytest.raises(FileNotFoundError, match=re.escape(url)):
        load_state_dict(url)


def test_meta_load_reads_only_the_safetensors_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state()
    save_state_dict(state, tmp_path / "a.safetensors")
    url = _memory_url("a.safetensors")
    save_state_dict(state, url)

    def no_data(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(safetensors.torch, "load_file", no_data)
    monkeypatch.setattr(safetensors.torch, "load", no_data)
    for where in (tmp_path / "a.safetensors", url):
        meta = load_state_dict(where, map_location="meta")
        assert set(meta) == set(state)
        for k, t in meta.items():
            assert t.device.type == "meta"
            assert (t.shape, t.dtype) == (state[k].shape, state[k].dtype)


def test_metadata_and_bad_states_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only stored in safetensors"):
        save_state_dict(_state(), tmp_path / "a.pt", metadata={"a": "b"})
    with pytest.raises(TypeError, match="str to str"):
        save_state_dict(_state(), tmp_path / "a.safetensors", metadata={"step": 3})
    with pytest.raises(TypeError, match="'w' is a list"):
        save_state_dict({"w": [1, 2]}, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="meta device"):
        save_state_dict({"w": torch.empty(2, device="meta")}, tmp_path / "a.pt")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- fsspec


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_memory_url_round_trip(name: str) -> None:
    state = _state()
    url = _memory_url(name)
    save_state_dict(state, url)
    _assert_same(state, load_state_dict(url))
    torch.save({"model": state}, buf := io.BytesIO())
    nested = _memory_url("nested.pth")
    atomic_save_bytes(buf.getvalue(), nested)
    _assert_same(state, load_state_dict(nested))


def test_file_url_round_trip(tmp_path: Path) -> None:
    state = _state()
    url = (tmp_path / "sub" / "m.safetensors").as_uri()
    save_state_dict(state, url)
    assert (tmp_path / "sub" / "m.safetensors").is_file()
    _assert_same(state, load_state_dict(url))


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "deep" / "dir" / "ckpt.bin"  # parents are created
    with atomic_write(dest) as f:
        f.write(b"first")
    with atomic_write(dest) as f:
        f.write(b"second")
    with atomic_write(tmp_path / "notes.txt", "w") as f:
        f.write("texte é")
    assert dest.read_bytes() == b"second"
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "texte é"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["ckpt.bin"]


def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "a.bin") as f:
        f.write(b"x")
    (tmp_path / "b.bin").write_bytes(b"x")  # created the ordinary way
    mode = stat.S_IMODE((tmp_path / "a.bin").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.bin").stat().st_mode)


def test_atomic_write_exception_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "ckpt.safetensors"
    save_state_dict(_state(), dest)
    before = dest.read_bytes()
    with pytest.raises(KeyboardInterrupt), atomic_write(dest) as f:
        f.write(b"partial garbage")
        f.flush()
        raise KeyboardInterrupt
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]
    # a failing serialiser inside save_state_dict behaves the same
    with pytest.raises(TypeError):
        save_state_dict({"a": torch.ones(1), "b": "nope"}, dest)  # type: ignore[dict-item]
    assert dest.read_bytes() == before
    # and a new destination is not created at all
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new.bin") as f:
        f.write(b"x")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_atomic_write_survives_sigkill_mid_write(tmp_path: Path) -> None:
    dest = tmp_path / "ckpt.bin"
    dest.write_bytes(b"OLD CONTENT")
    script = textwrap.dedent(
        """
        import sys, time
        from xfm.core.checkpoint.atomic import atomic_write
        with atomic_write(sys.argv[1]) as f:
            f.write(b"NEW" * 100_000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
            f.write(b"never")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(dest)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        temps = [p for p in tmp_path.iterdir() if p.name != "ckpt.bin"]
        assert len(temps) == 1 and temps[0].stat().st_size == 300_000  # killed mid-write
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert dest.read_bytes() == b"OLD CONTENT"


def test_remote_atomic_write_exception_keeps_old_object() -> None:
    url = _memory_url("ckpt.bin")
    atomic_save_bytes(b"OLD", url)
    with pytest.raises(RuntimeError), atomic_write(url) as f:
        f.write(b"NEW partial")
        raise RuntimeError("boom")
    fs, path = fsspec.core.url_to_fs(url)
    assert fs.cat_file(path) == b"OLD"
    assert fs.ls(os.path.dirname(path), detail=False) == [path]
    with atomic_write(url) as f:
        f.write(b"NEW")
    assert fs.cat_file(path) == b"NEW"
    assert fs.ls(os.path.dirname(path), detail=False) == [path]


def test_atomic_write_rejects_read_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "a", "ab"):
        pass


# --------------------------------------------------------------------------- S3 (moto server)


@pytest.mark.cloud
@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_s3_round_trip(moto_s3, name: str) -> None:
    state = _state()
    url = moto_s3.url(name)
    save_state_dict(state, url, storage_options=moto_s3.storage_options)
    _assert_same(state, load_state_dict(url, storage_options=moto_s3.storage_options))
    fs, path = fsspec.core.url_to_fs(url, **moto_s3.storage_options)
    assert fs.ls(os.path.dirname(path), detail=False) == [path]  # no temp object left


@pytest.mark.cloud
def test_s3_endpoint_from_environment(moto_s3, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    state = _state()
    url = moto_s3.url("env.safetensors")
    save_state_dict(state, url)  # no storage_options: S3_ENDPOINT_URL points at moto
    _assert_same(state, load_state_dict(url))
    assert set(load_state_dict(url, map_location="meta")) == set(state)


@pytest.mark.cloud
def test_s3_failed_write_keeps_old_object_and_missing_object_is_named(moto_s3) -> None:
    opts = moto_s3.storage_options
    url = moto_s3.url("ckpt.pt")
    save_state_dict(_state(), url, storage_options=opts)
    with pytest.raises(RuntimeError), atomic_write(url, storage_options=opts) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    _assert_same(_state(), load_state_dict(url, storage_options=opts))
    fs, path = fsspec.core.url_to_fs(url, **opts)
    fs.invalidate_cache()
    assert fs.ls(os.path.dirname(path), detail=False) == [path]
    missing = moto_s3.url("absent.safetensors")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_state_dict(missing, storage_options=opts)


def test_safetensors_whose_header_length_starts_with_0x80(tmp_path: Path) -> None:
    # A torch pickle starts with 0x80 too; the safetensors check must come first.
    from safetensors.torch import save_file

    for n in range(1, 400):
        path = tmp_path / f"h{n}.safetensors"
        save_file({"w" * n: torch.arange(3.0)}, str(path))
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no key length gave a header length whose low byte is 0x80")
    state = load_state_dict(path)
    assert torch.equal(state["w" * n], torch.arange(3.0))
