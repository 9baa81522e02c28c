"""Build and check the release artifacts of the six xfm packages.

For every package under ``packages/`` this builds an sdist and a wheel with ``python -m build``
(the wheel is built from the sdist, so a file missing from the sdist fails the build) into one
wheelhouse folder, then checks them:

* ``twine check --strict`` (the long description renders, the metadata is complete);
* the metadata: name, version equal to ``__version__`` of the source package, and a
  ``## <version>`` heading in the package's CHANGELOG.md;
* the requirements: every sibling xfm package is required with a compatible-release
  specifier (``xfm-core~=0.2.0``) that the sibling's version in the wheelhouse satisfies, and the
  run-time requirements, followed through the sibling wheels, pull in none of the distributions a
  package must not need (``xfm-text``: neither timm nor mosaicml-streaming; see
  :data:`FORBIDDEN_REQUIRES`);
* the files: a wheel holds only ``xfm/<name>/...`` (``xfm`` is a PEP 420 namespace package, so
  no ``xfm/__init__.py``) and its ``.dist-info``.

Usage::

    python tools/release.py                      # all six into dist/wheelhouse
    python tools/release.py --outdir DIR core text vision
    python tools/release.py --check-only         # check what is already in the wheelhouse

Needs ``build`` and ``twine`` (``pip install build twine``). Exit status 0 when every check
passes, 1 when a check fails (each problem is printed), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "text", "vision", "fusion", "train", "tasks")
DEFAULT_OUTDIR = ROOT / "dist" / "wheelhouse"

#: Distributions a package must not require at run time, directly or through its siblings
#: (the packaging side of the ``FORBIDDEN`` import checks in noxfile.py).
FORBIDDEN_REQUIRES: dict[str, frozenset[str]] = {
    "core": frozenset({"timm", "transformers", "mosaicml-streaming", "tokenizers"}),
    "text": frozenset({"timm", "mosaicml-streaming", "transformers"}),
    "vision": frozenset({"timm", "transformers", "tokenizers", "mosaicml-streaming"}),
    "fusion": frozenset({"mosaicml-streaming", "transformers"}),
    "train": frozenset({"transformers"}),
    "tasks": frozenset(),
}

__all__ = [
    "FORBIDDEN_REQUIRES",
    "PACKAGES",
    "WheelInfo",
    "build",
    "check_wheelhouse",
    "main",
    "read_wheel",
    "source_version",
]


def dist_name(package: str) -> str:
    """``"text"`` -> ``"xfm-text"``."""
    return f"xfm-{package}"


def source_version(package: str, root: Path = ROOT) -> str:
    """``__version__`` of ``packages/xfm-<package>/src/xfm/<package>/__init__.py``."""
    init = root / "packages" / dist_name(package) / "src" / "xfm" / package / "__init__.py"
    match = re.search(r'^__version__ = "([^"]+)"$', init.read_text(encoding="utf-8"), re.M)
    if match is None:
        raise ValueError(f'{init}: no line __version__ = "..."')
    return match.group(1)


@dataclass
class WheelInfo:
    """What the checks need from one wheel."""

    path: Path
    name: str
    version: str
    metadata: str  # the METADATA file, for error messages
    requires: list[Requirement]
    files: list[str] = field(default_factory=list)

    def runtime_requires(self) -> list[Requirement]:
        """Requirements without an ``extra`` marker (what ``pip install NAME`` pulls in)."""
        return [r for r in self.requires if r.marker is None or r.marker.evaluate({"extra": ""})]


def read_wheel(path: Path) -> WheelInfo:
    """Name, version, ``Requires-Dist`` and file list of a wheel."""
    with zipfile.ZipFile(path) as zf:
        files = zf.namelist()
        meta_name = next(n for n in files if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta_name).decode("utf-8")
    msg = email.parser.Parser(policy=email.policy.compat32).parsestr(text)
    return WheelInfo(
        path=path,
        name=canonicalize_name(msg["Name"]),
        version=msg["Version"],
        metadata=text,
        requires=[Requirement(r) for r in msg.get_all("Requires-Dist") or []],
        files=files,
    )


def build(packages: Sequence[str], outdir: Path) -> None:
    """``python -m build`` (sdist, then the wheel from it) for each package into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    for package in packages:
        for old in outdir.glob(f"xfm_{package}-*"):
            old.unlink()
        src = ROOT / "packages" / dist_name(package)
        print(f"[release] building {dist_name(package)}", flush=True)
        res = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(outdir), str(src)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            print(res.stdout + res.stderr, file=sys.stderr)
            raise subprocess.CalledProcessError(res.returncode, res.args)


def _wheels(outdir: Path) -> dict[str, WheelInfo]:
    infos = [read_wheel(p) for p in sorted(outdir.glob("xfm_*.whl"))]
    return {info.name: info for info in infos}


def _closure(name: str, wheels: dict[str, WheelInfo]) -> set[str]:
    """Canonical names of every distribution ``pip install name`` pulls in through the
    run-time requirements of the wheels in the wheelhouse (third-party ones not followed)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in wheels:
            todo += [canonicalize_name(r.name) for r in wheels[current].runtime_requires()]
    seen.discard(name)
    return seen


def _check_files(package: str, info: WheelInfo) -> list[str]:
    problems = []
    prefix = f"xfm/{package}/"
    for f in info.files:
        top = f.split("/", 1)[0]
        if not (f.startswith(prefix) or top.endswith(".dist-info")):
            problems.append(f"{info.path.name}: unexpected file {f} (only {prefix}... belongs)")
    if f"{prefix}__init__.py" not in info.files:
        problems.append(f"{info.path.name}: {prefix}__init__.py is missing")
    return problems


def _check_sdist(package: str, version: str, outdir: Path) -> list[str]:
    sdist = outdir / f"xfm_{package}-{version}.tar.gz"
    if not sdist.is_file():
        return [f"{dist_name(package)}: no sdist {sdist.name} in {outdir}"]
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    need = ["pyproject.toml", "README.md", "CHANGELOG.md", f"src/xfm/{package}/__init__.py"]
    return [f"{sdist.name}: {n} is missing" for n in need if n not in names]


def check_wheelhouse(
    outdir: Path, packages: Sequence[str] = PACKAGES, root: Path = ROOT
) -> list[str]:
    """Every problem found with the artifacts of ``packages`` in ``outdir`` (empty: all good)."""
    problems: list[str] = []
    wheels = _wheels(outdir)
    versions = {name: Version(w.version) for name, w in wheels.items()}
    for package in packages:
        name = dist_name(package)
        if name not in wheels:
            problems.append(f"{name}: no wheel in {outdir}")
            continue
        info = wheels[name]
        expected = source_version(package, root)
        if info.version != expected:
            problems.append(f"{name}: wheel version {info.version} != __version__ {expected}")
        changelog = root / "packages" / name / "CHANGELOG.md"
        if not re.search(rf"^## {re.escape(info.version)}\b", changelog.read_text("utf-8"), re.M):
            problems.append(f"{name}: {changelog.relative_to(root)} has no '## {info.version}'")
        for req in info.requires:
            sibling = canonicalize_name(req.name)
            if not sibling.startswith("xfm-"):
                continue
            ops = {spec.operator for spec in req.specifier}
            if ops != {"~="}:
                problems.append(f"{name}: requires {req} (want a compatible release: ~=)")
            elif sibling in versions and versions[sibling] not in SpecifierSet(str(req.specifier)):
                problems.append(
                    f"{name}: requires {req} but the wheelhouse has {sibling} {versions[sibling]}"
                )
        pulled = _closure(name, wheels)
        bad = sorted(pulled & FORBIDDEN_REQUIRES[package])
        if bad:
            problems.append(f"{name}: `pip install {name}` would pull in {', '.join(bad)}")
        problems += _check_files(package, info)
        problems += _check_sdist(package, info.version, outdir)
    return problems


def twine_check(outdir: Path, packages: Sequence[str]) -> list[str]:
    """``twine check --strict`` on the artifacts of ``packages``; its output when it fails."""
    files = [str(p) for pkg in packages for p in sorted(outdir.glob(f"xfm_{pkg}-*"))]
    if not files:
        return []
    res = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
    )
    return [] if res.returncode == 0 else [f"twine check failed:\n{res.stdout}{res.stderr}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="release.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("packages", nargs="*", help=f"some of {', '.join(PACKAGES)} (default all)")
    parser.add_argument("--outdir", type=Path, default=DEFAULT_OUTDIR, help="the wheelhouse")
    parser.add_argument("--check-only", action="store_true", help="do not build, only check")
    args = parser.parse_args(argv)
    unknown = [p for p in args.packages if p not in PACKAGES]
    if unknown:
        print(f"error: unknown package(s) {unknown}; choose from {list(PACKAGES)}", file=sys.stderr)
        return 2
    packages = args.packages or list(PACKAGES)
    missing = [m for m in ("build", "twine") if not _importable(m)]
    if missing:
        print(f"error: needs {' and '.join(missing)}: pip install build twine", file=sys.stderr)
        return 2
    outdir = args.outdir.resolve()
    if not args.check_only:
        try:
            build(packages, outdir)
        except subprocess.CalledProcessError as err:
            print(f"error: the build failed: {err}", file=sys.stderr)
            return 1
    problems = twine_check(outdir, packages) + check_wheelhouse(outdir, packages)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    if problems:
        print(f"error: {len(problems)} release check(s) failed in {outdir}", file=sys.stderr)
        return 1
    for w in sorted(outdir.iterdir()):
        print(f"  {w.name}")
    print(f"[release] {len(packages)} package(s) built and checked in {outdir}")
    return 0


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
