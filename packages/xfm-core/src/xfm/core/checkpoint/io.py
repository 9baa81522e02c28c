"""Read and write state dicts in safetensors and torch formats, locally or through fsspec.

Formats are recognised by their content, not their name:

* **safetensors**: an 8-byte little-endian header length ``n``, then ``n`` bytes of JSON
  starting with ``{``, then the tensor data;
* **torch zip** (``torch.save`` since 1.6): a zip archive, starting with ``PK``;
* **torch legacy pickle** (``_use_new_zipfile_serialization=False``): starts with the pickle
  protocol opcode ``0x80``.

Torch files are only ever read with ``torch.load(weights_only=True)``: a file that contains
arbitrary Python objects is refused with a :class:`CheckpointError` instead of executing code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
from collections.abc import Mapping
from typing import IO, Any, Literal

import safetensors.torch
import torch

from xfm.core.checkpoint.atomic import atomic_save_bytes, atomic_write
from xfm.core.checkpoint.errors import CheckpointError
from xfm.core.checkpoint.storage import PathOrUrl, is_local, local_path, open_file, read_bytes

__all__ = [
    "CheckpointFormat",
    "detect_format",
    "load_state_dict",
    "load_state_dict_from_bytes",
    "load_torch_object",
    "read_safetensors_metadata",
    "save_state_dict",
]

CheckpointFormat = Literal["safetensors", "torch"]
MapLocation = str | torch.device | None

# Keys under which training scripts commonly nest the weights, in order of preference.
NESTED_KEYS = ("model", "state_dict", "module")

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "C64": torch.complex64,
}
for _name, _attr in (
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
):
    if hasattr(torch, _attr):
        _SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)

_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header size


def _describe_head(head: bytes) -> str:
    return repr(head[:16]) if head else "an empty file"


def detect_format(head: bytes, source: str = "<bytes>") -> CheckpointFormat:
    """Recognise a checkpoint format from its first bytes (at least 9 are needed for safetensors).

    Raises:
        CheckpointError: when the bytes match no supported format.
    """
    # safetensors first: its 8-byte header length may itself start with 0x80 (e.g. 2944)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    raise CheckpointError(
        f"{source}: unrecognised checkpoint format: expected safetensors (8-byte header length, "
        f"then a JSON header starting with '{{') or a torch.save file (zip archive starting with "
        f"'PK', or a legacy pickle starting with 0x80); the file starts with {_describe_head(head)}"
    )


def _parse_safetensors_header(
    prefix: bytes, total_size: int, source: str
) -> tuple[dict[str, Any], int]:
    """Validate a safetensors header. ``prefix`` holds at least the first ``8 + n`` bytes (or
    the whole file if shorter). Returns the parsed header and ``n``."""
    if total_size < 8:
        raise CheckpointError(
            f"{source}: truncated safetensors file: {total_size} bytes, expected at least 8"
        )
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > _MAX_HEADER:
        raise CheckpointError(
            f"{source}: corrupt safetensors file: header length {n} exceeds {_MAX_HEADER} bytes"
        )
    if total_size < 8 + n:
        raise CheckpointError(
            f"{source}: truncated safetensors file: the header declares {n} bytes of JSON but "
            f"the file has only {total_size} bytes"
        )
    try:
        header = json.loads(prefix[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{source}: corrupt safetensors header (invalid JSON): {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: corrupt safetensors header: expected a JSON object")
    data_size = total_size - 8 - n
    needed = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise CheckpointError(
                f"{source}: corrupt safetensors header: entry {name!r} has no data_offsets"
            )
        needed = max(needed, int(offsets[1]))
    if needed > data_size:
        raise CheckpointError(
            f"{source}: truncated safetensors file: the header needs {needed} bytes of tensor "
            f"data but only {data_size} are present ({total_size} bytes in total)"
        )
    return header, n


def _meta_from_header(header: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(
                f"{source}: tensor {name!r} has dtype {info.get('dtype')!r}, which this torch "
                f"build cannot represent"
            )
        out[name] = torch.empty(info["shape"], dtype=dtype, device="meta")
    return out


def _safetensors_device(map_location: MapLocation, source: str) -> str:
    if map_location is None:
        return "cpu"
    if isinstance(map_location, str | torch.device):
        return str(map_location)
    raise TypeError(
        f"{source}: map_location for a safetensors file must be a device (str or torch.device), "
        f"got {type(map_location).__name__}"
    )


def _load_safetensors_bytes(
    data: bytes, map_location: MapLocation, source: str
) -> dict[str, torch.Tensor]:
    header, _ = _parse_safetensors_header(data, len(data), source)
    device = _safetensors_device(map_location, source)
    if device == "meta":
        return _meta_from_header(header, source)
    try:
        state = safetensors.torch.load(data)
    except Exception as e:
        raise CheckpointError(f"{source}: corrupt safetensors file: {e}") from e
    if device != "cpu":
        state = {k: v.to(device) for k, v in state.items()}
    return state


def _load_safetensors_local(
    path: str, map_location: MapLocation, source: str
) -> dict[str, torch.Tensor]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        first = f.read(8)
        n = struct.unpack("<Q", first)[0] if len(first) == 8 else 0
        prefix = first + f.read(min(n, _MAX_HEADER + 1))
    header, _ = _parse_safetensors_header(prefix, size, source)
    device = _safetensors_device(map_location, source)
    if device == "meta":
        return _meta_from_header(header, source)
    try:
        return safetensors.torch.load_file(path, device=device)
    except Exception as e:
        raise CheckpointError(f"{source}: corrupt safetensors file: {e}") from e


# torch.load failures that are not about the file's integrity (wrong map_location...)
_NOT_CORRUPTION_MARKERS = ("CUDA", "device", "map_location", "MPS")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _torch_load(f: IO[bytes] | str, map_location: Any, source: str) -> Any:
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSUPPORTED_GLOBAL.search(str(e))
        what = f" (it contains {found.group(1)})" if found else ""
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{source}: refused to load: the torch file holds Python objects that are not "
                f"tensors or plain containers{what}, and xfm only loads torch files with "
                f"torch.load(weights_only=True), which never runs code from the file. Convert "
                f"the checkpoint to safetensors with a trusted script, or, if you trust the "
                f"file, allow the class with torch.serialization.safe_globals([...]) around "
                f"this call."
            ) from e
        raise CheckpointError(f"{source}: corrupt torch checkpoint (unpickling failed): {e}") from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        msg = str(e).split(". This is an internal")[0] or type(e).__name__
        if not any(m in msg for m in _NOT_CORRUPTION_MARKERS):
            raise CheckpointError(
                f"{source}: corrupt or truncated torch checkpoint (expected a complete "
                f"torch.save file): {msg}"
            ) from e
        raise CheckpointError(f"{source}: cannot load the torch checkpoint: {msg}") from e


def load_torch_object(
    data: bytes | bytearray | memoryview,
    *,
    map_location: MapLocation = "cpu",
    source: str = "<bytes>",
) -> Any:
    """Unpickle a whole ``torch.save`` file held in memory, never running code from it.

    This is the one place where xfm reads torch pickles: it uses
    ``torch.load(weights_only=True)``, which only builds tensors and plain containers (dict,
    list, tuple, str, int, float, bool, None, ``OrderedDict``); a file that needs any other
    Python object (a ``__reduce__`` payload calling ``os.system``, a NumPy array) is refused.
    Use it for training states and other torch files that are not plain state dicts; use
    :func:`load_state_dict` for weights.

    Args:
        data: the file's bytes (a zip-format or legacy torch file).
        map_location: device for the tensors.
        source: how to name the data in error messages.

    Raises:
        CheckpointError: for a file that is not a torch file, is corrupt or truncated, or holds
            objects that ``weights_only`` refuses (the message names ``source``).
    """
    head = bytes(data[:16])
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(
            f"{source}: not a torch.save file (expected a zip archive starting with 'PK' or a "
            f"legacy pickle starting with 0x80); the file starts with {_describe_head(head)}"
        )
    return _torch_load(io.BytesIO(bytes(data)), map_location, source)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe_top(obj: Mapping[Any, Any]) -> str:
    parts = [f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:20]]
    more = f", ... ({len(obj)} keys in total)" if len(obj) > 20 else ""
    return ", ".join(parts) + more


def _select_state_dict(obj: Any, key: str | None, source: str) -> dict[str, torch.Tensor]:
    """Find the ``{name: tensor}`` dict inside a loaded torch object (see :func:`load_state_dict`)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a dict of tensors (or a dict holding one), got a "
            f"{type(obj).__name__}"
        )
    if key is not None:
        if key not in obj:
            raise CheckpointError(
                f"{source}: key {key!r} not found; top-level keys: {_describe_top(obj)}"
            )
        sub = obj[key]
        if not _is_tensor_dict(sub):
            bad = (
                [
                    f"{k!r} ({type(v).__name__})"
                    for k, v in sub.items()
                    if not isinstance(v, torch.Tensor)
                ]
                if isinstance(sub, Mapping)
                else []
            )
            detail = f"; non-tensor entries: {', '.join(bad[:10])}" if bad else ""
            raise CheckpointError(
                f"{source}: {key!r} does not hold a dict of tensors (got "
                f"{type(sub).__name__}){detail}"
            )
        return dict(sub)
    if _is_tensor_dict(obj):
        return dict(obj)
    candidates = [k for k in NESTED_KEYS if k in obj and _is_tensor_dict(obj[k])]
    if len(candidates) == 1:
        return dict(obj[candidates[0]])
    if candidates:
        raise CheckpointError(
            f"{source}: several entries hold a dict of tensors ({', '.join(map(repr, candidates))}); "
            f"pass key=... to choose one"
        )
    raise CheckpointError(
        f"{source}: cannot find the weights: the file holds a dict whose values are not all "
        f"tensors and none of {list(NESTED_KEYS)} holds a dict of tensors. Top-level keys: "
        f"{_describe_top(obj)}. Pass key=... to choose the entry that holds the weights."
    )


def load_state_dict_from_bytes(
    data: bytes,
    *,
    map_location: MapLocation = "cpu",
    key: str | None = None,
    source: str = "<bytes>",
) -> dict[str, torch.Tensor]:
    """Parse a whole checkpoint held in memory; see :func:`load_state_dict`.

    Args:
        source: how to name the data in error messages.
    """
    fmt = detect_format(data[:16], source)
    if fmt == "safetensors":
        _reject_key(key, source)
        return _load_safetensors_bytes(data, map_location, source)
    return _select_state_dict(_torch_load(io.BytesIO(data), map_location, source), key, source)


def _reject_key(key: str | None, source: str) -> None:
    if key is not None:
        raise ValueError(
            f"{source}: key={key!r} only applies to torch pickles that nest the weights; a "
            f"safetensors file is a flat dict of tensors"
        )


def load_state_dict(
    path_or_url: PathOrUrl,
    *,
    map_location: MapLocation = "cpu",
    key: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Load a ``{name: tensor}`` state dict from a safetensors or torch file.

    Args:
        path_or_url: a local path or any fsspec URL (``s3://``, ``gs://``, ``memory://``...).
        map_location: device for the tensors. ``"meta"`` gives shape/dtype-only tensors; for a
            safetensors file this reads only the header (no tensor data is read).
        key: for torch files that nest the weights (``{"model": state_dict, ...}``), the entry
            to use. With ``None``: the top-level dict if all its values are tensors, else the one
            of ``model``/``state_dict``/``module`` that holds a dict of tensors.
        storage_options: passed to the fsspec filesystem (see :mod:`~.storage`).

    Returns:
        A plain dict from parameter name to tensor.

    Raises:
        FileNotFoundError: when the file does not exist (the message names it).
        CheckpointError: when the file is corrupt, truncated, in an unknown format, holds
            non-tensor Python objects that ``weights_only`` refuses, or holds no recognisable
            state dict.
    """
    source = os.fspath(path_or_url) if isinstance(path_or_url, os.PathLike) else path_or_url
    if is_local(source):
        path = local_path(source)
        if not os.path.isfile(path):
            what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
            raise FileNotFoundError(f"checkpoint {source!r} {what}")
        with open(path, "rb") as f:
            head = f.read(16)
        fmt = detect_format(head, source)
        if fmt == "safetensors":
            _reject_key(key, source)
            return _load_safetensors_local(path, map_location, source)
        return _select_state_dict(_torch_load(path, map_location, source), key, source)
    if isinstance(map_location, str | torch.device) and str(map_location) == "meta":
        with open_file(source, storage_options=storage_options) as f:
            head = f.read(16)
            if detect_format(head, source) == "safetensors":
                _reject_key(key, source)
                return _meta_from_header(_read_remote_header(f, head, source), source)
    try:
        data = read_bytes(source, storage_options=storage_options)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"checkpoint {e}") from e
    return load_state_dict_from_bytes(data, map_location=map_location, key=key, source=source)


def _read_remote_header(f: IO[bytes], head: bytes, source: str) -> dict[str, Any]:
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    first = f.read(8)
    n = struct.unpack("<Q", first)[0] if len(first) == 8 else 0
    prefix = first + f.read(min(n, _MAX_HEADER + 1))
    return _parse_safetensors_header(prefix, size, source)[0]


def read_safetensors_metadata(
    path_or_url: PathOrUrl, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Read the ``__metadata__`` of a safetensors file (only the header is read)."""
    source = os.fspath(path_or_url) if isinstance(path_or_url, os.PathLike) else path_or_url
    with open_file(source, storage_options=storage_options) as f:
        head = f.read(16)
        if detect_format(head, source) != "safetensors":
            raise CheckpointError(f"{source}: expected a safetensors file, found a torch file")
        header = _read_remote_header(f, head, source)
    return dict(header.get("__metadata__") or {})


def _check_state(state: Any) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a mapping from str to torch.Tensor, got {type(state).__name__}")
    for k, v in state.items():
        if not isinstance(k, str):
            raise TypeError(f"state dict keys must be str, got {k!r} ({type(k).__name__})")
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(v).__name__}, not a torch.Tensor")
        if v.device.type == "meta":
            raise ValueError(f"state dict entry {k!r} is on the meta device and has no data")


def _untie_for_safetensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make every tensor contiguous and the sole owner of its storage (safetensors refuses
    tensors that share memory, e.g. tied embeddings, and non-contiguous views)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        whole = (
            t.is_contiguous()
            and t.storage_offset() == 0
            and storage.nbytes() == t.numel() * t.element_size()
        )
        if not whole or (ptr != 0 and ptr in seen):
            t = t.clone(memory_format=torch.contiguous_format)
            ptr = t.untyped_storage().data_ptr()
        if ptr != 0:
            seen.add(ptr)
        out[name] = t
    return out


def save_state_dict(
    state: Mapping[str, torch.Tensor],
    path_or_url: PathOrUrl,
    *,
    metadata: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Save a state dict atomically (see :func:`~xfm.core.checkpoint.atomic.atomic_write`).

    The format follows the name: ``*.safetensors`` is written with safetensors (tensors are made
    contiguous and tied/shared tensors are cloned, since safetensors stores each tensor on its
    own; loading gives back untied copies with equal values); any other name is written with
    ``torch.save`` as a plain ``{name: tensor}`` dict.

    Args:
        metadata: ``{str: str}`` stored in the safetensors header (safetensors only).

    Raises:
        TypeError: for a non-``{str: Tensor}`` state or non-string metadata.
        ValueError: for metadata with a torch file, or meta tensors.
    """
    _check_state(state)
    name = os.fspath(path_or_url) if isinstance(path_or_url, os.PathLike) else str(path_or_url)
    if name.endswith(".safetensors"):
        if metadata is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise TypeError(f"safetensors metadata must map str to str, got {dict(metadata)!r}")
        data = safetensors.torch.save(
            _untie_for_safetensors(state), metadata=dict(metadata) if metadata else None
        )
        atomic_save_bytes(data, path_or_url, storage_options=storage_options)
        return
    if metadata is not None:
        raise ValueError(
            f"{name}: metadata is only stored in safetensors files (name the file *.safetensors)"
        )
    with atomic_write(path_or_url, "wb", storage_options=storage_options) as f:
        torch.save(dict(state), f)
