"""The package installs and imports on its own."""

import importlib.metadata

import xfm.fusion


def test_version_matches_distribution():
    assert xfm.fusion.__version__ == importlib.metadata.version("xfm-fusion")
