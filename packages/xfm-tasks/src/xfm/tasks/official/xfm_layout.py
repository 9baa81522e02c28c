"""The layouts whose model is an :class:`~xfm.fusion.model.XFM` (pretraining, retrieval, NLVR2,
grounding): one importer / exporter, :mod:`xfm.fusion.official`'s key mapping.

Task checkpoints differ from the pretraining one by the text prefix (``text_encoder.`` for the
task's bare ``RobertaModel``, ``text_encoder.roberta.`` in pretraining), by having no text MLM /
captioning heads, and by their own heads (same names as ours).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from xfm.core.checkpoint import LoadReport
from xfm.core.config import to_dict
from xfm.fusion.model import XFM, XFMConfig
from xfm.fusion.official import (
    check_official_family,
    infer_official_config,
    load_official_state,
    to_official,
)
from xfm.tasks.base import get_task
from xfm.tasks.official.golden import golden_config_of, task_config_from_golden
from xfm.tasks.official.layout import OfficialLayout

__all__ = ["XFMTaskLayout", "infer_config"]

#: Official names a task checkpoint never has (its text encoder is a ``RobertaModel``).
_NOT_IN_TASKS = re.compile(r"^text_encoder\.(?:lm_head|lm_cap_head)\.")


def infer_config(state: Mapping[str, torch.Tensor]) -> XFMConfig:
    """The :class:`XFMConfig` of an official pretraining / retrieval / NLVR2 / grounding state
    dict, read off its shapes (head counts ``width // 64``; ``embed_dim`` 256 when the layout
    has no ITC projection, where it is unused)."""
    probe = dict(state)
    probe.setdefault("vision_proj.weight", torch.empty(256, 1, device="meta"))
    return infer_official_config(probe)


class XFMTaskLayout(OfficialLayout):
    """An official task class whose model is one of our :class:`~xfm.tasks.base.TaskModel`."""

    text_prefix: ClassVar[str] = "text_encoder."
    model_class: ClassVar[type[nn.Module]] = XFM

    def owns(self, model: nn.Module) -> bool:
        return type(model) is self.model_class

    def model_from_golden(
        self, golden: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> nn.Module:
        assert self.task is not None
        return get_task(self.task).build_model(task_config_from_golden(golden))

    def model_from_config(
        self, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
    ) -> nn.Module:
        assert self.task is not None
        return get_task(self.task).build_model(dict(config))

    def model_config(self, model: nn.Module) -> dict[str, Any]:
        return to_dict(model.config)

    def import_state(
        self,
        model: nn.Module,
        state: Mapping[str, torch.Tensor],
        *,
        strict: bool = True,
        source: str = "<official state dict>",
        golden: Mapping[str, Any] | None = None,
    ) -> LoadReport:
        check_official_family(state.keys(), source)
        if strict:  # (a fine-tuning init may take the encoders of another task)
            self.check_family(state, source)
        report = load_official_state(model, state, strict=strict, source=source)
        model.official_config = dict(golden or {})
        return report

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        out = to_official(model, text_prefix=self.text_prefix)
        return {k: v for k, v in out.items() if not _NOT_IN_TASKS.search(k)}

    def golden_config(self, model: nn.Module) -> dict[str, Any]:
        kept = getattr(model, "official_config", None)
        return dict(kept) if kept else golden_config_of(model, self.golden_names[0])
