"""xfm.core: Registry, attention backends, transformer blocks, checkpoint I/O, config and the `xfm` command."""

__version__ = "0.1.0"
