"""azd prepackage hook: ship our sources' byte-code, compiled for the Function App's Python."""

# A Flex Consumption app runs from its package, mounted read-only as wwwroot, so Python
# cannot write __pycache__ there and would compile function_app.py and channel/ again at
# every cold start (pip compiles site-packages when it installs them; nothing compiles
# ours). This hook compiles what is deployed (the .py files .funcignore keeps) with an
# interpreter of the runtime version infra/app/api.bicep gives the app, in checked-hash
# mode: each .pyc records a hash of its source instead of an mtime, so it stays valid after
# zip and mount, and an edited source is noticed and compiled afresh, never run stale.
# Without such an interpreter the package goes out as before (one line says so) and the
# hook still succeeds. Standard library only: it runs on the deploying machine's Python.

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
API_BICEP = Path("infra") / "app" / "api.bicep"
PROBE = "import sys; print('%d.%d' % sys.version_info[:2])"
_RUNTIME = re.compile(r"\bruntime\s*:\s*\{(?P<body>[^{}]*)\}")
_VERSION = re.compile(r"^(?P<major>\d+)\.(?P<minor>\d+)$")


def runtime_version(bicep: str) -> str | None:
    """The Python version of the Flex app's ``runtime: { name: 'python', version: 'X.Y' }``.

    None when the template has no such block or gives the version as an expression (a
    parameter, say): the one value this hook needs, read from its single source of truth.
    """
    found: set[str] = set()
    for block in _RUNTIME.finditer(bicep):
        body = block["body"]
        if re.search(r"\bname\s*:\s*'python'", body) is None:
            continue
        version = re.search(r"\bversion\s*:\s*'(\d+\.\d+)'", body)
        if version is not None:
            found.add(version[1])
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class Rule:
    """One line of ``.funcignore`` (gitignore syntax: the subset such files use)."""

    pattern: str
    negated: bool
    directory_only: bool
    anchored: bool

    @classmethod
    def parse(cls, line: str) -> Rule | None:
        """The rule of one line; None for blank lines and comments."""
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        negated = text.startswith("!")
        text = text.removeprefix("!")
        directory_only = text.endswith("/")
        text = text.rstrip("/")
        # A slash anywhere but at the end anchors the pattern to the package root.
        anchored = "/" in text
        return cls(text.lstrip("/"), negated, directory_only, anchored)

    def matches(self, path: PurePosixPath, is_dir: bool) -> bool:
        """True when this rule's pattern names ``path`` (relative to the package root)."""
        if self.directory_only and not is_dir:
            return False
        if self.anchored:
            return fnmatch.fnmatchcase(str(path), self.pattern)
        return fnmatch.fnmatchcase(path.name, self.pattern)


def ignore_rules(root: Path) -> list[Rule]:
    """The rules of ``root/.funcignore`` (none when there is no such file)."""
    path = root / ".funcignore"
    if not path.is_file():
        return []
    rules = (Rule.parse(line) for line in path.read_text(encoding="utf-8").splitlines())
    return [rule for rule in rules if rule is not None]


def ignored(rules: Sequence[Rule], path: PurePosixPath, is_dir: bool) -> bool:
    """Whether ``path`` is left out of the package: the last rule naming it decides."""
    verdict = False
    for rule in rules:
        if rule.matches(path, is_dir):
            verdict = not rule.negated
    return verdict


def deployed_files(root: Path) -> Iterator[Path]:
    """Every file of ``root`` the package keeps, as a path relative to ``root``.

    Byte-code caches already there are skipped: this hook writes the ones it ships.
    """
    rules = ignore_rules(root)
    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root)
        dirs[:] = sorted(
            name
            for name in dirs
            if name != "__pycache__"
            and not ignored(rules, PurePosixPath((here / name).as_posix()), is_dir=True)
        )
        for name in sorted(files):
            relative = here / name
            if not ignored(rules, PurePosixPath(relative.as_posix()), is_dir=False):
                yield relative


def deployed_sources(root: Path) -> list[Path]:
    """The deployed Python sources, relative to ``root``."""
    return [path for path in deployed_files(root) if path.suffix == ".py"]


def candidates(version: str, os_name: str = os.name) -> list[list[str]]:
    """Commands that may start Python ``version``, best first (the current one aside)."""
    found = [[path] for path in [shutil.which(f"python{version}")] if path]
    if os_name == "nt":
        launcher = shutil.which("py")
        if launcher:
            found.append([launcher, f"-{version}"])
    return found


def version_of(command: Sequence[str]) -> str | None:
    """The ``X.Y`` version ``command`` runs, or None when it does not start."""
    try:
        # A command found on PATH (a pyenv shim may be there and fail): run as given.
        done = subprocess.run(  # noqa: S603
            [*command, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_interpreter(version: str) -> list[str] | None:
    """A command running Python ``version``: this one if it is, else one on PATH."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return [sys.executable]
    for command in candidates(version):
        if version_of(command) == version:
            return command
    return None


def compile_sources(command: Sequence[str], root: Path, sources: Sequence[Path]) -> int:
    """Byte-compile ``sources`` (relative to ``root``) with checked-hash ``.pyc`` files.

    ``-f`` rewrites any cache already there (a timestamp-based one from a local run would
    not survive the package's mtimes); the paths go in on stdin (``-i -``), relative, so
    no path of the deploying machine is recorded and no command line grows too long.
    A cache prefix or optimization level set in this shell would put the files where, or
    name them as, the app's Python never looks: both are dropped.
    """
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPYCACHEPREFIX", "PYTHONOPTIMIZE")
    }
    done = subprocess.run(  # noqa: S603 - an interpreter this hook found and checked
        [
            *command,
            "-m",
            "compileall",
            "-q",
            "-f",
            "--invalidation-mode",
            "checked-hash",
            "-i",
            "-",
        ],
        input="".join(f"{path.as_posix()}\n" for path in sources),
        cwd=root,
        env=env,
        text=True,
        check=False,
    )
    return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    """The hook: 0 unless a source fails to compile (which the app would fail on too)."""
    parser = argparse.ArgumentParser(prog="prepackage.py", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the folder azd packages")
    parser.add_argument(
        "--python-version",
        help=f"the Python to compile for (default: the runtime version in {API_BICEP.as_posix()})",
    )
    options = parser.parse_args(argv)
    root: Path = options.root.resolve()
    version: str | None = options.python_version
    if version is None:
        version = runtime_version((ROOT / API_BICEP).read_text(encoding="utf-8"))
    if version is None or _VERSION.match(version) is None:
        print(
            f"prepackage: no Python runtime version found in {API_BICEP.as_posix()}; "
            "our sources will be compiled at each cold start instead."
        )
        return 0
    command = find_interpreter(version)
    if command is None:
        print(
            f"prepackage: Python {version} not found (python{version} on PATH"
            + (f" or py -{version}" if os.name == "nt" else "")
            + "); the package ships no byte-code of ours, so the app compiles its sources "
            "at each cold start instead."
        )
        return 0
    sources = deployed_sources(root)
    status = compile_sources(command, root, sources)
    if status != 0:
        print(f"prepackage: compiling with {' '.join(command)} failed (exit status {status}).")
        return status
    print(
        f"prepackage: {len(sources)} modules byte-compiled for Python {version} "
        f"(checked-hash) with {' '.join(command)}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
