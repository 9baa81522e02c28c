"""Converters from the official dataset formats to MDS shards (``xfm data prepare ...``)."""

from xfm.train.data.prepare.common import Skip, write_all
from xfm.train.data.prepare.readers import (
    read_coco_karpathy,
    read_coco_regions,
    read_image_folder,
    read_text_files,
    read_vg_regions,
    read_xvlm_json,
)

__all__ = [
    "Skip",
    "read_coco_karpathy",
    "read_coco_regions",
    "read_image_folder",
    "read_text_files",
    "read_vg_regions",
    "read_xvlm_json",
    "write_all",
]
