"""Checkpoint I/O for xfm: safetensors and torch files on local disks or any fsspec store,
atomic saves, declarative key mapping of foreign checkpoints, and strict loading with readable
reports.

Typical use::

    from xfm.core.checkpoint import KeyMapper, Rename, load_into, load_state_dict

    state = load_state_dict("s3://bucket/xfm_base.pth")     # {'model': ...} found automatically
    mapper = KeyMapper([Rename(r"^text_encoder\\.roberta\\.", "text.")], drop=[r"^itm_head\\."])
    report = load_into(model, state, mapper=mapper)          # raises CheckpointMismatchError
    save_state_dict(model.state_dict(), "out/model.safetensors")   # atomic
"""

from xfm.core.checkpoint.atomic import atomic_save_bytes, atomic_write
from xfm.core.checkpoint.errors import (
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointMismatchError,
    CheckpointSaveError,
    KeyMappingError,
    NotInvertibleError,
)
from xfm.core.checkpoint.io import (
    CheckpointFormat,
    detect_format,
    load_state_dict,
    load_state_dict_from_bytes,
    load_torch_object,
    read_safetensors_metadata,
    save_state_dict,
)
from xfm.core.checkpoint.keymap import (
    Drop,
    KeyMapper,
    MappedState,
    Merge,
    Rename,
    Rule,
    Split,
    Transform,
    invert_rename,
)
from xfm.core.checkpoint.load import compare_state, load_into
from xfm.core.checkpoint.report import (
    DtypeMismatch,
    KeyGroup,
    LoadReport,
    ShapeMismatch,
    group_keys,
)
from xfm.core.checkpoint.storage import PathOrUrl, is_local, open_file, read_bytes, resolve

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointIntegrityError",
    "CheckpointMismatchError",
    "CheckpointSaveError",
    "Drop",
    "DtypeMismatch",
    "KeyGroup",
    "KeyMapper",
    "KeyMappingError",
    "LoadReport",
    "MappedState",
    "Merge",
    "NotInvertibleError",
    "PathOrUrl",
    "Rename",
    "Rule",
    "ShapeMismatch",
    "Split",
    "Transform",
    "atomic_save_bytes",
    "atomic_write",
    "compare_state",
    "detect_format",
    "group_keys",
    "invert_rename",
    "is_local",
    "load_into",
    "load_state_dict",
    "load_state_dict_from_bytes",
    "load_torch_object",
    "open_file",
    "read_bytes",
    "read_safetensors_metadata",
    "resolve",
    "save_state_dict",
]
