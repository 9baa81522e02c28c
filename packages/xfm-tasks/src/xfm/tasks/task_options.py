"""Load-time checks of a fine-tuning config's ``task`` and ``options`` (pydantic validators of
:class:`xfm.tasks.base.FinetuneConfig`).

``task`` must name a registered task (``xfm.task`` entry point); ``options`` must be options
the task accepts: the fields of its ``options_class`` (a dataclass) when it declares one, else
the keys of its ``default_options``. The ``model`` section is checked like a pretraining one,
plus the task model's own sections (``Task.model_sections``, e.g. ``decoder``). When the options belong to another task (typically a
config written for task A run as ``xfm finetune B``), the error says which task the config is
for.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationInfo

from xfm.core.config import ConfigError, UnknownKeyError, validate_section

__all__ = ["check_task_model", "check_task_name", "check_task_options", "task_option_names"]


def _task_class(name: str) -> Any:
    from xfm.core.registry import get

    return get("task", name)


def task_option_names(task_class: Any) -> list[str]:
    """The option names a task class accepts."""
    declared = getattr(task_class, "options_class", None)
    if dataclasses.is_dataclass(declared):
        return [f.name for f in dataclasses.fields(declared)]
    return sorted(getattr(task_class, "default_options", {}) or {})


def check_task_name(name: str) -> str:
    """``name`` when it is empty or a registered task.

    Raises:
        ConfigError: unknown task (with the closest registered names).
    """
    from xfm.core.registry import RegistryError

    if name:
        try:
            _task_class(name)
        except RegistryError as e:
            raise ConfigError(str(e)) from None
    return name


def _tasks_accepting(keys: set[str]) -> list[str]:
    from xfm.core.registry import RegistryError, available

    found = []
    for name in available("task"):
        try:
            names = set(task_option_names(_task_class(name)))
        except (RegistryError, ImportError):
            continue
        if keys <= names:
            found.append(name)
    return found


def _file_task(info: ValidationInfo, task: str) -> str | None:
    """The config file's own ``task`` when an override changed it to ``task``."""
    context = info.context if isinstance(info.context, Mapping) else {}
    before = context.get("before_overrides")
    file_task = before.get("task") if isinstance(before, Mapping) else None
    return file_task if isinstance(file_task, str) and file_task and file_task != task else None


def check_task_options(options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Check ``options`` against the task named by the config's ``task`` (see the module doc).

    Raises:
        ConfigError: an option the task does not accept, or options of another task.
    """
    task = info.data.get("task") if info.data else None
    if not task or not options:
        return options
    task_class = _task_class(task)
    valid = task_option_names(task_class)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        file_task = _file_task(info, task)
        if file_task:
            owner, why = file_task, "its 'task' key"
        else:
            owners = [t for t in _tasks_accepting(set(options)) if t != task]
            owner, why = (owners[0], "they are its options") if owners else (None, "")
        if owner is not None:
            raise ConfigError(
                f"this config is for task {owner!r} ({why}), not {task!r}: task {task!r} has no "
                f"option {', '.join(repr(u) for u in unknown)} (its options: "
                f"{', '.join(valid) or 'none'}). Run `xfm finetune {owner}` with it, or use a "
                f"{task} config."
            )
        raise UnknownKeyError(unknown[0], valid, what="option", note=f"(task {task!r})")
    declared = getattr(task_class, "options_class", None)
    if dataclasses.is_dataclass(declared):
        return validate_section(declared, options)
    return options


def check_task_model(spec: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Check a fine-tuning model section (:func:`xfm.train.config.check_model_spec`) with the
    extra sections the task's model accepts (its ``model_sections``, e.g. a ``decoder``)."""
    from xfm.core.registry import RegistryError
    from xfm.fusion.model import XFMConfig
    from xfm.train.config import check_model_spec

    task = info.data.get("task") if info.data else None
    sections: dict[str, type] = {}
    if task:
        with contextlib.suppress(RegistryError):
            sections = dict(getattr(_task_class(task), "model_sections", {}) or {})
        known = {f.name for f in dataclasses.fields(XFMConfig)} | set(sections)
        extra = sorted(set(spec) - known)
        file_task = _file_task(info, task)
        if extra and file_task:
            raise ConfigError(
                f"this config is for task {file_task!r} (its 'task' key), not {task!r}: the "
                f"{task} model has no {', '.join(repr(k) for k in extra)} section. Run `xfm "
                f"finetune {file_task}` with it, or use a {task} config."
            )
    return check_model_spec(spec, sections)
