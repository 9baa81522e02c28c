"""The package installs and imports on its own."""

import importlib.metadata

import xfm.train


def test_version_matches_distribution():
    assert xfm.train.__version__ == importlib.metadata.version("xfm-train")
