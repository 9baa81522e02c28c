"""Tests of xfm.core.registry: in-process registration, lazy entry points, errors, real plugins.

Distributions are made two ways: written by hand as ``<name>.dist-info`` directories next to
their modules (fast, for unit tests), and really built and installed with pip from the
``fixtures/plugin_pkg`` project and from projects generated in ``tmp_path`` (the third-party
plugin and duplicate-name tests).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from xfm.core import registry
from xfm.core.registry import (
    KINDS,
    ComponentInfo,
    ComponentLoadError,
    DuplicateComponentError,
    Registry,
    UnknownComponentError,
    UnknownKindError,
)

PLUGIN_PKG = Path(__file__).parent / "fixtures" / "plugin_pkg"


# ------------------------------------------------------------------------------------ helpers


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def write_distribution(
    site: Path,
    dist: str,
    version: str,
    entry_points: dict[str, dict[str, str]],
    modules: dict[str, str] | None = None,
) -> None:
    """Write an installed-looking distribution into ``site``: its modules and ``.dist-info``."""
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def on_sys_path(*paths: Path, modules: tuple[str, ...] = ()) -> Iterator[None]:
    """Put ``paths`` first on ``sys.path``; afterwards remove them, forget ``modules`` and
    make every global registry re-list its entry points."""
    for p in reversed(paths):
        sys.path.insert(0, str(p))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for p in paths:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(p))
        for m in modules:
            sys.modules.pop(m, None)
        registry.refresh()


def pip_install(projects: list[Path], target: Path) -> None:
    """Build and install ``projects`` into ``target`` with pip, offline, with the setuptools
    backend of this environment."""
    pytest.importorskip("setuptools", reason="the fixture plugins build with setuptools")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-build-isolation",
        "--no-deps",
        "--no-index",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(target),
        *map(str, projects),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip failed:\n{result.stdout}\n{result.stderr}"


def setuptools_project(
    root: Path, dist: str, version: str, module: str, body: str, eps: str
) -> Path:
    """Generate a one-module setuptools project in ``root``; ``eps`` is pyproject TOML."""
    root.mkdir(parents=True)
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=64"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "{version}"

            [tool.setuptools]
            py-modules = ["{module}"]
            """
        )
        + textwrap.dedent(eps)
    )
    return root


@pytest.fixture
def private_group() -> str:
    """An entry-point group that no installed distribution uses."""
    return _unique("xfm.test_group")


# --------------------------------------------------------------------------- in-process use


def test_register_decorator_get_and_create(private_group: str) -> None:
    reg = Registry("text_encoder", group=private_group)

    @reg.register("bert")
    class Bert:
        def __init__(self, width: int = 4, layers: int = 2) -> None:
            self.width, self.layers = width, layers

    def build_roberta(width: int) -> tuple[str, int]:
        return ("roberta", width)

    assert reg.register("roberta", build_roberta) is build_roberta  # direct call form

    @reg.register()  # name defaults to __name__
    class Electra:
        pass

    assert reg.names() == ["Electra", "bert", "roberta"]
    assert reg.get("bert") is Bert
    model = reg.create("bert", width=16)
    assert isinstance(model, Bert) and (model.width, model.layers) == (16, 2)
    assert reg.create("roberta", width=3) == ("roberta", 3)
    assert "bert" in reg and "gpt" not in reg and len(reg) == 3
    info = {i.name: i for i in reg.entries()}
    assert info["bert"] == ComponentInfo(
        kind="text_encoder",
        name="bert",
        value=f"{Bert.__module__}:{Bert.__qualname__}",
        distribution=None,
        version=None,
        source="in-process",
    )


def test_module_level_register_create_and_entries() -> None:
    name = _unique("tiny")

    @registry.register("objective", name)
    class Tiny:
        def __init__(self, weight: float = 1.0) -> None:
            self.weight = weight

    try:
        assert name in registry.available("objective")
        assert registry.get("objective", name) is Tiny
        assert registry.create("objective", name, weight=0.5).weight == 0.5
        assert registry.get_registry("objective").get(name) is Tiny
        (info,) = [i for i in registry.entries("objective") if i.name == name]
        assert info.source == "in-process" and info.kind == "objective"
        assert name not in registry.available("model")  # kinds are separate
    finally:
        registry.get_registry("objective").unregister(name)
    assert name not in registry.available("objective")


def test_register_same_name_twice_raises_unless_override(private_group: str) -> None:
    reg = Registry("model", group=private_group)

    def first() -> int:
        return 1

    def second() -> int:
        return 2

    reg.register("m", first)
    reg.register("m", first)  # the very same object again: no-op
    with pytest.raises(DuplicateComponentError) as excinfo:
        reg.register("m", second)
    assert "'m'" in str(excinfo.value) and "override=True" in str(excinfo.value)
    assert reg.get("m") is first
    reg.register("m", second, override=True)
    assert reg.get("m") is second


@pytest.mark.parametrize("bad", ["", " padded", 3, None])
def test_register_rejects_bad_names(private_group: str, bad: object) -> None:
    reg = Registry("model", group=private_group)
    obj = object()  # has no __name__, so a missing name cannot be filled in either
    with pytest.raises(ValueError, match="name"):
        reg.register(bad, obj)  # type: ignore[arg-type]


def test_create_with_wrong_config_names_the_component_and_its_parameters(
    private_group: str,
) -> None:
    reg = Registry("text_encoder", group=private_group)

    @reg.register("bert")
    def build(width: int, layers: int = 2) -> int:
        return width * layers

    with pytest.raises(TypeError) as excinfo:
        reg.create("bert", width=4, heads=2)
    msg = str(excinfo.value)
    assert "'bert'" in msg and "heads" in msg and "width" in msg and "layers" in msg
    reg.register("constant", 7)
    with pytest.raises(TypeError, match="not callable"):
        reg.create("constant")


# ------------------------------------------------------------------------------- the errors


def test_unknown_name_lists_available_names_and_close_matches(private_group: str) -> None:
    reg = Registry("text_encoder", group=private_group)
    for name in ("bert", "roberta", "beit_text"):
        reg.register(name, object())
    with pytest.raises(UnknownComponentError) as excinfo:
        reg.get("bret")
    err = excinfo.value
    assert isinstance(err, KeyError) and isinstance(err, LookupError)
    msg = str(err)
    assert msg.startswith("Unknown text_encoder 'bret'")  # readable: not a quoted KeyError repr
    assert "Did you mean 'bert'" in msg
    for name in ("bert", "roberta", "beit_text"):
        assert repr(name) in msg
    assert err.suggestions[0] == "bert" and err.available == ["beit_text", "bert", "roberta"]
    with pytest.raises(KeyError):
        reg.create("robert")


def test_unknown_name_in_empty_registry_says_how_to_add_one(private_group: str) -> None:
    reg = Registry("vision_encoder", group=private_group)
    with pytest.raises(UnknownComponentError) as excinfo:
        reg.get("beit_v2")
    msg = str(excinfo.value)
    assert "No vision_encoder components are registered" in msg and private_group in msg


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(UnknownKindError) as excinfo:
        registry.get_registry("text_encodr")
    msg = str(excinfo.value)
    assert "'text_encodr'" in msg and "Did you mean 'text_encoder'" in msg
    for kind in KINDS:
        assert repr(kind) in msg
    for call in (
        lambda: registry.get("encoder", "bert"),
        lambda: registry.create("encoder", "bert"),
        lambda: registry.available("encoder"),
        lambda: registry.register("encoder", "bert", object()),
    ):
        with pytest.raises(UnknownKindError):
            call()


def test_kinds_and_groups() -> None:
    assert KINDS == (
        "text_encoder",
        "vision_encoder",
        "fusion_encoder",
        "model",
        "objective",
        "task",
        "data_source",
        "checkpoint_format",
        "cli",
    )
    for kind in KINDS:
        reg = registry.get_registry(kind)
        assert reg.kind == kind and reg.group == f"xfm.{kind}"
        assert registry.get_registry(kind) is reg


# ------------------------------------------------------------------- entry points (by hand)


def test_entry_points_are_listed_without_import_and_loaded_on_get(
    tmp_path: Path, private_group: str
) -> None:
    module = _unique("xfm_lazy_probe")
    write_distribution(
        tmp_path,
        "xfm-lazy-probe",
        "1.2.3",
        {private_group: {"lazy": f"{module}:Lazy", "other": f"{module}:Other"}},
        {module: "class Lazy:\n    pass\n\nclass Other:\n    pass\n"},
    )
    reg = Registry("text_encoder", group=private_group)
    with on_sys_path(tmp_path, modules=(module,)):
        assert reg.names() == ["lazy", "other"]
        assert "lazy" in reg
        infos = reg.entries()
        assert module not in sys.modules  # listing imports nothing
        assert infos[0] == ComponentInfo(
            kind="text_encoder",
            name="lazy",
            value=f"{module}:Lazy",
            distribution="xfm-lazy-probe",
            version="1.2.3",
            source="entry point",
        )
        assert reg.info("other").value == f"{module}:Other"
        assert module not in sys.modules
        lazy = reg.get("lazy")
        assert module in sys.modules
        assert lazy is sys.modules[module].Lazy
        assert reg.get("lazy") is lazy  # loaded once, then cached


def test_entry_point_import_failure_raises_component_load_error(
    tmp_path: Path, private_group: str
) -> None:
    module = _unique("xfm_broken_probe")
    write_distribution(
        tmp_path,
        "xfm-broken-probe",
        "0.0.1",
        {private_group: {"broken": f"{module}:Thing", "missing_attr": f"{module}_ok:Nope"}},
        {
            module: "raise ImportError('needs the uninstalled package frobnicate')\n",
            f"{module}_ok": "X = 1\n",
        },
    )
    reg = Registry("model", group=private_group)
    with on_sys_path(tmp_path, modules=(module, f"{module}_ok")):
        assert reg.names() == ["broken", "missing_attr"]  # a broken plugin does not break listing
        with pytest.raises(ComponentLoadError) as excinfo:
            reg.get("broken")
        err = excinfo.value
        assert isinstance(err, ImportError)
        msg = str(err)
        assert "xfm-broken-probe 0.0.1" in msg and f"{module}:Thing" in msg
        assert "frobnicate" in msg and isinstance(err.__cause__, ImportError)
        with pytest.raises(ComponentLoadError, match="AttributeError"):
            reg.get("missing_attr")


def test_module_registering_its_own_entry_point_object_is_not_a_duplicate(
    tmp_path: Path,
) -> None:
    """An entry point may point at a class whose module also uses ``@register`` for it."""
    module = _unique("xfm_selfreg_probe")
    name = _unique("selfreg")
    write_distribution(
        tmp_path,
        "xfm-selfreg-probe",
        "0.1.0",
        {"xfm.text_encoder": {name: f"{module}:Encoder"}},
        {
            module: f"""
            from xfm.core.registry import register

            @register("text_encoder", "{name}")
            class Encoder:
                pass
            """
        },
    )
    with on_sys_path(tmp_path, modules=(module,)):
        registry.refresh("text_encoder")
        encoder = registry.get("text_encoder", name)
        assert encoder is sys.modules[module].Encoder
        (info,) = [i for i in registry.entries("text_encoder") if i.name == name]
        assert info.source == "entry point" and info.distribution == "xfm-selfreg-probe"

        # A different object under an entry point's name is a conflict ...
        with pytest.raises(DuplicateComponentError, match="xfm-selfreg-probe"):
            registry.register("text_encoder", name, object())
        # ... unless it explicitly shadows the entry point.
        replacement = object()
        registry.register("text_encoder", name, replacement, override=True)
        assert registry.get("text_encoder", name) is replacement
        registry.get_registry("text_encoder").unregister(name)
        assert registry.get("text_encoder", name) is encoder


def test_same_distribution_listed_twice_is_one_component(
    tmp_path: Path, private_group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _unique("xfm_twice_probe")
    first, second = tmp_path / "a", tmp_path / "b"
    # e.g. an editable install and a stale copy of its metadata, spelled differently
    for site, dist in ((first, "xfm_twice.probe"), (second, "XFM-Twice-Probe")):
        site.mkdir()
        write_distribution(
            site,
            dist,
            "0.2.0",
            {private_group: {"twice": f"{module}:Obj"}},
            {module: "Obj = object()\n"},
        )
    # importlib.metadata already hides the second copy on sys.path; make sure the registry
    # itself deduplicates what it is given, comparing normalised distribution names.
    original = registry._discover_entry_points

    def listed_twice(group: str) -> list:
        stale = [
            ep
            for dist in importlib.metadata.distributions(path=[str(second)])
            for ep in dist.entry_points
            if ep.group == group
        ]
        assert [ep.dist.metadata["Name"] for ep in stale] == ["XFM-Twice-Probe"]
        return original(group) + stale

    monkeypatch.setattr(registry, "_discover_entry_points", listed_twice)
    reg = Registry("data_source", group=private_group)
    with on_sys_path(first, second, modules=(module,)):
        assert reg.names() == ["twice"]
        assert len(reg.entries()) == 1 and reg.conflicts() == {}
        assert reg.get("twice") is sys.modules[module].Obj


def test_first_discovery_is_done_once_under_concurrency(
    tmp_path: Path, private_group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _unique("xfm_thread_probe")
    write_distribution(
        tmp_path,
        "xfm-thread-probe",
        "0.1.0",
        {private_group: {"t": f"{module}:Obj"}},
        {module: "Obj = object()\n"},
    )
    calls = []
    original = registry._discover_entry_points

    def counting(group: str) -> list:
        calls.append(group)
        return original(group)

    monkeypatch.setattr(registry, "_discover_entry_points", counting)
    reg = Registry("task", group=private_group)
    results: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(reg.get("t"))

    with on_sys_path(tmp_path, modules=(module,)):
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert calls == [private_group]
        assert len(results) == 8 and all(r is sys.modules[module].Obj for r in results)
        reg.refresh()
        reg.names()
        assert calls == [private_group, private_group]


# ------------------------------------------------------------- real distributions, with pip


@pytest.fixture(scope="module")
def demo_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fixtures/plugin_pkg`` (xfm-demo-plugin) built and installed into a fresh directory."""
    work = tmp_path_factory.mktemp("demo_plugin")
    project = work / "src"
    shutil.copytree(PLUGIN_PKG, project, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = work / "site"
    pip_install([project], site)
    return site


def test_third_party_plugin_installed_with_pip_plugs_in(demo_plugin_site: Path) -> None:
    assert (demo_plugin_site / "xfm_demo_plugin").is_dir()
    sys.modules.pop("xfm_demo_plugin", None)
    assert "demo_encoder" not in registry.available("text_encoder")
    with on_sys_path(demo_plugin_site, modules=("xfm_demo_plugin",)):
        # Listed entry points are cached until refresh() re-scans them.
        assert "demo_encoder" not in registry.available("text_encoder")
        registry.refresh()
        assert "demo_encoder" in registry.available("text_encoder")
        assert "demo" in registry.available("cli")
        (info,) = [i for i in registry.entries("text_encoder") if i.name == "demo_encoder"]
        assert (info.distribution, info.version, info.value, info.source) == (
            "xfm-demo-plugin",
            "0.3.1",
            "xfm_demo_plugin:DemoEncoder",
            "entry point",
        )
        assert "xfm_demo_plugin" not in sys.modules
        encoder = registry.create("text_encoder", "demo_encoder", width=3, layers=2)
        module = sys.modules["xfm_demo_plugin"]
        assert module.__file__.startswith(str(demo_plugin_site))
        assert isinstance(encoder, module.DemoEncoder)
        assert (encoder.width, encoder.layers) == (3, 2)
    assert "demo_encoder" not in registry.available("text_encoder")


def test_same_name_from_two_distributions_is_an_error_naming_both(tmp_path: Path) -> None:
    name = _unique("twin")
    mod_a, mod_b = _unique("xfm_dup_a"), _unique("xfm_dup_b")
    projects = [
        setuptools_project(
            tmp_path / "a",
            "xfm-dup-a",
            "1.0.0",
            mod_a,
            "class Twin:\n    pass\n\nclass OnlyA:\n    pass\n",
            f"""
            [project.entry-points."xfm.vision_encoder"]
            {name} = "{mod_a}:Twin"
            only_a_{name} = "{mod_a}:OnlyA"
            """,
        ),
        setuptools_project(
            tmp_path / "b",
            "xfm-dup-b",
            "2.0.0",
            mod_b,
            "class Twin:\n    pass\n",
            f"""
            [project.entry-points."xfm.vision_encoder"]
            {name} = "{mod_b}:Twin"
            """,
        ),
    ]
    site = tmp_path / "site"
    pip_install(projects, site)
    with on_sys_path(site, modules=(mod_a, mod_b)):
        registry.refresh("vision_encoder")
        assert name in registry.available("vision_encoder")  # listing still works
        with pytest.raises(DuplicateComponentError) as excinfo:
            registry.get("vision_encoder", name)
        msg = str(excinfo.value)
        for part in ("xfm-dup-a 1.0.0", "xfm-dup-b 2.0.0", f"{mod_a}:Twin", f"{mod_b}:Twin"):
            assert part in msg
        assert mod_a not in sys.modules and mod_b not in sys.modules
        conflicts = registry.get_registry("vision_encoder").conflicts()
        assert {i.distribution for i in conflicts[name]} == {"xfm-dup-a", "xfm-dup-b"}
        assert len([i for i in registry.entries("vision_encoder") if i.name == name]) == 2
        # The conflict is local to its name.
        assert registry.get("vision_encoder", f"only_a_{name}").__name__ == "OnlyA"
