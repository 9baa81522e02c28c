"""``lazy_exports``: attributes imported on first access, cached, listed, unknown ones refused."""

from __future__ import annotations

import sys
import types

import pytest

from xfm.core.lazy import lazy_exports


def test_lazy_exports_imports_on_first_access_and_caches():
    namespace: dict = {"eager": 1}
    getattr_, dir_ = lazy_exports("pkg", namespace, {"dumps": "json", "nothing": "json"})
    assert "dumps" not in namespace
    import json

    assert getattr_("dumps") is json.dumps
    assert namespace["dumps"] is json.dumps  # cached: the next access never calls __getattr__
    assert dir_() == ["dumps", "eager", "nothing"]
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'other'"):
        getattr_("other")
    with pytest.raises(AttributeError):  # listed, but the module lacks it
        getattr_("nothing")


def test_module_level_use(monkeypatch):
    mod = types.ModuleType("fake_pkg")
    mod.__getattr__, mod.__dir__ = lazy_exports("fake_pkg", mod.__dict__, {"sep": "os"})
    monkeypatch.setitem(sys.modules, "fake_pkg", mod)
    import os

    from fake_pkg import sep  # type: ignore[import-not-found]

    assert sep == os.sep
