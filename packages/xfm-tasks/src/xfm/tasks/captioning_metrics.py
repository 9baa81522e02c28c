"""Captioning metrics: BLEU-1..4 and CIDEr-D from ``pycocoevalcap`` (the COCO caption scorers).

Only the pure-Python scorers are used (``Bleu``, ``Cider``); the PTB tokenizer of the package
needs Java, so captions are tokenised here the simple way: lower case, punctuation removed,
split on whitespace. Install with ``pip install xfm-tasks[captioning]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["caption_scores", "tokenize_caption"]

_PUNCT = re.compile(r"[^\w\s']")


def tokenize_caption(text: str) -> str:
    """Lower-cased caption with punctuation removed and single spaces."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def caption_scores(
    predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]]
) -> dict[str, float]:
    """``{"bleu1".."bleu4", "cider"}`` (corpus-level, as the COCO caption evaluation).

    Args:
        predictions: image id -> generated caption.
        references: image id -> reference captions (at least one each).

    Raises:
        ImportError: ``pycocoevalcap`` is not installed.
        KeyError: an image of ``references`` has no prediction.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "captioning metrics need pycocoevalcap: pip install 'xfm-tasks[captioning]'"
        ) from err
    missing = [k for k in references if k not in predictions]
    if missing:
        raise KeyError(f"{len(missing)} image(s) without a caption, e.g. {missing[:3]}")
    gts = {k: [tokenize_caption(r) for r in refs] for k, refs in references.items()}
    res = {k: [tokenize_caption(predictions[k])] for k in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu{i + 1}": 100.0 * float(b) for i, b in enumerate(bleu)}
    out["cider"] = 100.0 * float(cider)
    return out
