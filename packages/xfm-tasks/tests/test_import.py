"""The package installs and imports on its own."""

import importlib.metadata

import xfm.tasks


def test_version_matches_distribution():
    assert xfm.tasks.__version__ == importlib.metadata.version("xfm-tasks")
