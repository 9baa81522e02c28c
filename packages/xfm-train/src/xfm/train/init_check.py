"""``init_from`` that does not fit the model fails loudly (unless ``init_strict: false``).

Loading a checkpoint non-strictly into a model of other sizes silently trains most tensors from
scratch. :func:`check_init` turns a load report with missing or mis-shaped tensors into a
:class:`~xfm.core.checkpoint.CheckpointError` with the grouped report, except for tensors that
are new by design (the config's ``optim.new_params`` patterns: heads a task adds).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from xfm.core.checkpoint import CheckpointError
from xfm.core.checkpoint.report import LoadReport

__all__ = ["check_init"]


def check_init(
    report: LoadReport,
    source: str,
    *,
    strict: bool = True,
    new_params: Sequence[str] = (),
) -> str:
    """One summary line of ``report``; raises when ``strict`` and the checkpoint does not fit.

    Args:
        report: what loading ``source`` into the model did.
        source: the checkpoint, for the messages.
        strict: raise on model tensors that are missing from the checkpoint (other than those
            matching ``new_params``) or whose shape or dtype differs. Keys of the checkpoint
            that the model does not have (heads it does not use) are always fine.
        new_params: regular expressions of parameters that are new by design.

    Raises:
        CheckpointError: with the grouped report and how to proceed.
    """
    missing = [k for k in report.missing if not any(re.search(p, k) for p in new_params)]
    problems = dataclasses.replace(report, missing=missing, unexpected=[])
    bad = missing or report.shape_mismatches or report.dtype_mismatches
    if strict and bad:
        grouped = problems.format(checkpoint=source, model="the configured model")
        grouped = "\n".join(grouped.splitlines()[:-1])  # drop the loader's strict= hint
        raise CheckpointError(
            f"init_from does not fit the model, so these tensors would silently train from "
            f"scratch:\n{grouped}\n  Make the model section match the checkpoint's sizes, or set "
            f"init_strict: false to start the tensors listed above from scratch."
        )
    new = len(report.missing) - len(missing)
    return f"{len(report.loaded)} tensors loaded, {new} new by design; {problems.summary()}"
