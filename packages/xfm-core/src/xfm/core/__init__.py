"""xfm.core: the foundation every xfm package builds on.

Submodules (imported on demand, so ``import xfm.core`` stays light):

* :mod:`xfm.core.registry` — entry-point plugin registry (``create(kind, name, **config)``).
* :mod:`xfm.core.attention` — the one attention function and its backends.
* :mod:`xfm.core.layers` — shared transformer blocks and heads.
* :mod:`xfm.core.checkpoint` — state-dict I/O (local or fsspec URLs), key mapping, atomic saves.
* :mod:`xfm.core.config` — dataclass configs from YAML with ``a.b=c`` overrides.
* :mod:`xfm.core.cli` — the ``xfm`` command; subcommands come from ``xfm.cli`` entry points.
"""

__version__ = "0.2.0"
