"""The official X-FM checkpoint layouts, in one home (timm-style: one module per layout).

Why here, in xfm-tasks: an official layout pairs the official class with one of our models
and reproduces its golden outputs, which takes the model (xfm-fusion), the losses
(xfm-train's objectives) and the task models (xfm-tasks). xfm-tasks is the only package that
sees all three, so the layouts live here and no lower package imports upwards; only the
pretraining key mapping stays beside the model (:mod:`xfm.fusion.official`), and the layouts
use it.

Each layout is one :class:`~xfm.tasks.official.layout.OfficialLayout` (import official ->
ours, export ours -> official, our model of a golden ``config.json``, golden outputs of golden
``inputs``), registered under the ``checkpoint_format`` kind of :mod:`xfm.core.registry` as
``official_<name>``:

=============  ===============================================  ===============================
layout         official class                                   our model
=============  ===============================================  ===============================
pretrain       ``models.model_pretrain.XFM``                    :class:`~xfm.fusion.XFM`
retrieval      ``XFMForRetrieval``                              ``RetrievalModel``
nlvr           ``XFMForNLVR``                                   ``NLVRModel``
grounding      ``XFMForGrounding``                              ``GroundingModel``
vqa            ``XFMForVQA``                                    ``VQAModel``
glue           ``XFMForClassification`` (text)                  ``TextClassifier``
imagenet       ``XFMForClassification`` (images)                ``ImageClassifier`` (deep head)
=============  ===============================================  ===============================

The tensors the official models carry but never use are handled once, for all of them, by
:mod:`xfm.tasks.official.unused`. The registry drives ``xfm check-official``
(:mod:`~xfm.tasks.official.check`), ``xfm import-official`` and ``xfm export-official``
(:mod:`~xfm.tasks.official.commands`).
"""

from xfm.tasks.official.golden import read_key_list, task_config_from_golden
from xfm.tasks.official.layout import (
    OfficialLayout,
    detect_layout,
    get_layout,
    layout_for_golden,
    layout_names,
    layout_of_model,
    layouts,
)
from xfm.tasks.official.weights import (
    init_task_model,
    is_official_state,
    load_golden_dir,
    load_task_weights,
    resolve_checkpoint,
)

__all__ = [
    "OfficialLayout",
    "detect_layout",
    "get_layout",
    "init_task_model",
    "is_official_state",
    "layout_for_golden",
    "layout_names",
    "layout_of_model",
    "layouts",
    "load_golden_dir",
    "load_task_weights",
    "read_key_list",
    "resolve_checkpoint",
    "task_config_from_golden",
]
