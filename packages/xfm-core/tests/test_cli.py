"""Tests of the ``xfm`` command line (xfm.core.cli): plugin subcommands, ``info``, errors."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from xfm.core import registry
from xfm.core.cli import Command, build_parser, main
from xfm.core.registry import KINDS

PLUGIN_PKG = Path(__file__).parent / "fixtures" / "plugin_pkg"
CORE_VERSION = importlib.metadata.version("xfm-core")


# ------------------------------------------------------------------------------------ helpers


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def write_distribution(
    site: Path, dist: str, version: str, entry_points: dict[str, dict[str, str]], modules: dict
) -> None:
    """Write an installed-looking distribution into ``site``: its modules and ``.dist-info``."""
    for module, source in modules.items():
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
def on_sys_path(path: Path, modules: tuple[str, ...] = ()) -> Iterator[None]:
    """Put ``path`` first on ``sys.path`` with fresh registries; undo everything afterwards."""
    sys.path.insert(0, str(path))
    registry.refresh()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(path))
        for m in modules:
            sys.modules.pop(m, None)
        registry.refresh()


def _help_commands(help_text: str) -> dict[str, str]:
    """``{command: help}`` from the commands section of ``xfm --help`` (wrapped lines joined)."""
    section = help_text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines()[1:]:  # the first line is the `<command>` metavar
        if line.startswith("    ") and not line.startswith("     "):
            current, _, text = line.strip().partition(" ")
            entries[current] = text.strip()
        elif current is not None:
            entries[current] = f"{entries[current]} {line.strip()}".strip()
    return entries


GOOD_COMMAND = """
import argparse
from xfm.core.cli import Command

class Greet(Command):
    help = "Say hello."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--who", default="world")

    def run(self, args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return 3
"""


@pytest.fixture
def cli_plugins(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A distribution with a good command, a heavy one, one failing to import, one unusable."""
    mods = {
        "good": _unique("xfm_cli_good"),
        "heavy": _unique("xfm_cli_heavy"),
        "broken": _unique("xfm_cli_broken"),
        "bad": _unique("xfm_cli_bad"),
    }
    write_distribution(
        tmp_path,
        "xfm-cli-probe",
        "0.0.7",
        {
            "xfm.cli": {
                "greet": f"{mods['good']}:Greet",
                "heavy": f"{mods['heavy']}:Greet",
                "broken": f"{mods['broken']}:Cmd",
                "shapeless": f"{mods['bad']}:NotACommand",
            }
        },
        {
            mods["good"]: GOOD_COMMAND,
            mods["heavy"]: GOOD_COMMAND,
            mods["broken"]: "raise ImportError('needs the uninstalled package frobnicate')\n",
            mods["bad"]: "class NotACommand:\n    help = 'no run method'\n",
        },
    )
    with on_sys_path(tmp_path, modules=tuple(mods.values())):
        yield mods


# ------------------------------------------------------------------------------ xfm info


def test_info_lists_components_with_distribution_and_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"xfm-core {CORE_VERSION}"
    header = next(line for line in out.splitlines() if line.startswith("KIND"))
    assert header.split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "SOURCE", "OBJECT"]
    row = next(line for line in out.splitlines() if line.split()[:2] == ["cli", "info"])
    assert row.split() == [
        "cli",
        "info",
        "xfm-core",
        CORE_VERSION,
        "entry",
        "point",
        "xfm.core.cli.info:InfoCommand",
    ]
    # Columns are aligned: every value starts where its header does.
    assert row.index("xfm-core") == header.index("DISTRIBUTION")
    assert row.index("xfm.core.cli.info") == header.index("OBJECT")


def test_info_json_parses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["xfm_core_version"] == CORE_VERSION
    assert list(data["components"]) == list(KINDS)
    assert {
        "name": "info",
        "value": "xfm.core.cli.info:InfoCommand",
        "distribution": "xfm-core",
        "version": CORE_VERSION,
        "source": "entry point",
    } in data["components"]["cli"]
    assert data["empty_kinds"] == [k for k in KINDS if not data["components"][k]]


@pytest.fixture
def only_xfm_core(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registry sees the entry points of the xfm-core distribution only (as when only
    xfm-core is installed); restored afterwards."""
    original = registry._discover_entry_points

    def only_core(group: str) -> list:
        return [ep for ep in original(group) if ep.dist.metadata["Name"] == "xfm-core"]

    monkeypatch.setattr(registry, "_discover_entry_points", only_core)
    registry.refresh()
    try:
        yield
    finally:
        monkeypatch.undo()
        registry.refresh()


def test_info_with_only_xfm_core_installed_says_the_kinds_are_empty(
    only_xfm_core: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    empty = [k for k in KINDS if k != "cli"]
    assert f"No components registered for: {', '.join(empty)}." in out
    assert main(["info", "--json", "--kind", "model", "--kind", "cli"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["components"]) == ["model", "cli"]
    assert data["components"]["model"] == [] and data["empty_kinds"] == ["model"]
    assert [c["name"] for c in data["components"]["cli"]] == ["info"]


def test_a_command_of_an_uninstalled_xfm_package_names_the_package(
    only_xfm_core: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrain", "--config", "configs/pretrain/tiny.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "xfm: error: 'pretrain' is a command of the xfm-train package, which is not "
        "installed: pip install xfm-train (or ./packages/xfm-train from a checkout); "
        "installed commands: info"
    )
    assert main(["finetune", "retrieval"]) == 2
    assert "xfm-tasks package" in capsys.readouterr().err


def test_info_shows_in_process_components(capsys: pytest.CaptureFixture[str]) -> None:
    name = _unique("nb_objective")
    registry.register("objective", name, lambda: None)
    try:
        assert main(["info", "--kind", "objective"]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if name in line)
        assert row.split()[:3] == ["objective", name, "(in-process)"]
    finally:
        registry.get_registry("objective").unregister(name)


# ------------------------------------------------------------------ the command and its errors


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"xfm {CORE_VERSION}"


def test_unknown_subcommand_is_an_argparse_error_listing_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["infoo"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'infoo'" in err and "'info'" in err


def test_no_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: xfm" in err and "info" in err


def test_in_process_command_gets_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    class Echo(Command):
        help = "Echo a number."

        def add_arguments(self, parser: argparse.ArgumentParser) -> None:
            parser.add_argument("number", type=int)

        def run(self, args: argparse.Namespace) -> int:
            print(f"got {args.number}")
            return args.number

    name = _unique("echo")
    registry.register("cli", name, Echo)
    try:
        assert main([name, "5"]) == 5
        assert capsys.readouterr().out == "got 5\n"
        assert main([name, "not-a-number"]) == 2
        assert "invalid int value" in capsys.readouterr().err
        assert main([name, "--help"]) == 0
        assert "Echo a number." in capsys.readouterr().out
    finally:
        registry.get_registry("cli").unregister(name)


def test_command_base_class_requires_run() -> None:
    class Incomplete(Command):
        help = "no run"

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


def test_broken_plugin_commands_are_reported_but_do_not_break_help(
    cli_plugins: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = _help_commands(out)
    ours = {"broken", "greet", "heavy", "info", "shapeless"}
    assert ours <= set(listed)
    # other installed xfm packages (a dev environment) add their commands, all working
    assert not any(listed[name].startswith("[unavailable]") for name in set(listed) - ours)
    assert listed["broken"].startswith("[unavailable] ImportError: needs the uninstalled")
    assert listed["shapeless"].startswith("[unavailable] not an xfm command")
    assert "run() is missing" in listed["shapeless"]
    assert listed["greet"] == listed["heavy"] == "Say hello."
    assert "unavailable" not in listed["info"]
    # The full errors, with the distribution, follow the listing.
    assert "frobnicate" in out.split("unavailable commands")[1]
    assert "xfm-cli-probe 0.0.7" in out.split("unavailable commands")[1]
    assert build_parser().prog == "xfm"

    assert main(["broken"]) == 2
    err = capsys.readouterr().err
    assert (
        "frobnicate" in err
        and "xfm-cli-probe 0.0.7" in err
        and f"{cli_plugins['broken']}:Cmd" in err
    )
    assert main(["shapeless", "--anything"]) == 2
    assert "run() is missing" in capsys.readouterr().err

    assert main(["greet", "--who", "xfm"]) == 3  # the others still work
    assert capsys.readouterr().out == "hello xfm\n"
    assert main(["info", "--kind", "cli"]) == 0
    info = capsys.readouterr().out
    assert all(n in info for n in ("broken", "shapeless", "greet", "xfm-cli-probe"))


def test_only_the_chosen_subcommand_is_imported(cli_plugins: dict[str, str]) -> None:
    assert main(["greet"]) == 3
    assert cli_plugins["good"] in sys.modules
    assert cli_plugins["heavy"] not in sys.modules
    assert cli_plugins["bad"] not in sys.modules


# ----------------------------------------------------------- a real plugin, in a subprocess


@pytest.fixture(scope="module")
def demo_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fixtures/plugin_pkg`` (xfm-demo-plugin) built and installed with pip into a new dir."""
    pytest.importorskip("setuptools", reason="the fixture plugin builds with setuptools")
    work = tmp_path_factory.mktemp("demo_plugin")
    project = work / "src"
    shutil.copytree(PLUGIN_PKG, project, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps"]
    cmd += ["--no-index", "--disable-pip-version-check", "--quiet", "--target", str(site)]
    result = subprocess.run([*cmd, str(project)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip failed:\n{result.stdout}\n{result.stderr}"
    return site


def _run_xfm(args: list[str], site: Path, *, script: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    if script:
        cmd = [str(Path(sys.executable).parent / "xfm"), *args]
    else:
        cmd = [sys.executable, "-m", "xfm.core.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_real_plugin_command_and_info_in_a_subprocess(demo_plugin_site: Path) -> None:
    result = _run_xfm(["demo", "--width", "5"], demo_plugin_site)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "xfm-demo-plugin: DemoEncoder width=5\n"

    result = _run_xfm(["info"], demo_plugin_site)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["text_encoder", "demo_encoder", "xfm-demo-plugin", "0.3.1"] in [r[:4] for r in rows]
    assert ["cli", "demo", "xfm-demo-plugin", "0.3.1"] in [r[:4] for r in rows]

    result = _run_xfm(["info", "--json"], demo_plugin_site)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (demo,) = [c for c in data["components"]["text_encoder"] if c["name"] == "demo_encoder"]
    assert (demo["distribution"], demo["version"]) == ("xfm-demo-plugin", "0.3.1")

    result = _run_xfm(["--help"], demo_plugin_site)
    assert result.returncode == 0 and "Demo command of the xfm-demo-plugin" in result.stdout


def test_console_script(demo_plugin_site: Path) -> None:
    if not (Path(sys.executable).parent / "xfm").exists():
        pytest.skip("the `xfm` console script is not installed next to this interpreter")
    result = _run_xfm(["--version"], demo_plugin_site, script=True)
    assert result.returncode == 0 and result.stdout.strip() == f"xfm {CORE_VERSION}"
    result = _run_xfm(["demo"], demo_plugin_site, script=True)
    assert result.returncode == 0 and result.stdout == "xfm-demo-plugin: DemoEncoder width=8\n"
    result = _run_xfm(["nope"], demo_plugin_site, script=True)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
