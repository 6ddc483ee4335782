"""The azd prepackage hook, run for real on copies of the deployed files with real Pythons."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.bicep import ROOT, config, parse, resources
from tests.scripts import load_script

HOOK = ROOT / "infra" / "hooks" / "prepackage.py"
API = ROOT / "infra" / "app" / "api.bicep"
CURRENT = f"{sys.version_info.major}.{sys.version_info.minor}"
VERSIONS = ["3.11", "3.12", "3.13"]
CODE_OBJECT = re.compile(r"^# code object from '?(?P<path>[^']+?)'?$", re.M)


hook = load_script("prepackage", HOOK)


def python(version: str) -> Path | None:
    """An interpreter of ``version``: this one, pyenv's, or one on PATH that really runs."""
    if version == CURRENT:
        return Path(sys.executable)
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    found = sorted(glob.glob(f"{pyenv}/versions/{version}*/bin/python{version}"))
    if found:
        return Path(found[-1])
    on_path = shutil.which(f"python{version}")
    if on_path and hook.version_of([on_path]) == version:
        return Path(on_path)
    return None


def require(version: str) -> Path:
    """The interpreter of ``version``, or a skip naming the one missing."""
    found = python(version)
    if found is None:
        pytest.skip(f"Python {version} not found (pyenv or PATH): cannot compile for it here")
    return found


def deployed_copy(destination: Path) -> Path:
    """A copy of what the package holds (byte-code caches aside), plus files it leaves out."""
    for relative in hook.deployed_files(ROOT):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    # Left out by .funcignore, so never compiled.
    for relative in ("tests/test_left_out.py", "tools/left_out.py"):
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        (destination / relative).write_text("LEFT_OUT = True\n")
    return destination


def run_hook(
    root: Path, version: str, path: Sequence[Path] = ()
) -> subprocess.CompletedProcess[str]:
    """The hook as azd runs it (this Python), compiling for ``version``, with ``path`` first.

    A byte-code cache prefix and an optimization level are set, as a developer's shell may
    have them: the hook must still write the plain ``__pycache__`` files the app loads.
    """
    env = {
        **os.environ,
        "PATH": os.pathsep.join([*map(str, path), os.environ.get("PATH", "")]),
        "PYTHONPYCACHEPREFIX": str(root.parent / "pycache-prefix"),
        "PYTHONOPTIMIZE": "1",
    }
    return subprocess.run(  # noqa: S603 - our own hook, fixed arguments
        [sys.executable, str(HOOK), "--root", str(root), "--python-version", version],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cache_tag(interpreter: Path) -> str:
    done = subprocess.run(  # noqa: S603 - a Python found above
        [str(interpreter), "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def files_under(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*")}


def run_read_only(
    root: Path, command: Sequence[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``root`` made read-only, as the Flex app's mounted package is.

    ``chmod -w`` is enough for an ordinary user; root writes through it, so as root the
    folder is also bind-mounted read-only in a mount namespace of the command's own.
    """
    folders = [root, *(path for path in root.rglob("*") if path.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        argv = list(command)
        if os.geteuid() == 0:
            if shutil.which("unshare") is None:
                pytest.skip("running as root without unshare: cannot make a read-only folder")
            script = 'mount --bind -o ro "$0" "$0" && cd "$0" && exec "$@"'
            argv = ["unshare", "--mount", "sh", "-c", script, str(root), *argv]
        done = subprocess.run(  # noqa: S603 - our own commands
            argv, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        for folder in folders:
            folder.chmod(0o755)
    if os.geteuid() == 0 and "mount:" in done.stderr and done.returncode != 0:
        pytest.skip(f"running as root, no read-only bind mount here: {done.stderr.strip()}")
    return done


def loaded_from(root: Path, verbose: str) -> dict[str, str]:
    """``python -v``'s record of our modules: source file -> what its code came from."""
    loaded: dict[str, str] = {}
    for match in CODE_OBJECT.finditer(verbose):
        path = Path(match["path"])
        if not path.is_relative_to(root):
            continue
        relative = path.relative_to(root)
        if relative.parent.name == "__pycache__":
            source = relative.parent.parent / (relative.name.split(".")[0] + ".py")
            loaded[source.as_posix()] = "pyc"
        else:
            loaded[relative.as_posix()] = "source"
    return loaded


def import_env() -> dict[str, str]:
    """This process's environment, byte-code writing left on (the default Azure has)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


# -- the runtime version ---------------------------------------------------------------


def test_the_runtime_version_is_read_from_api_bicep_as_bicep_reads_it() -> None:
    (site,) = resources(API, "Microsoft.Web/sites").values()
    runtime = config(site)["properties"]["functionAppConfig"]["runtime"]
    assert runtime["name"] == "python"
    assert hook.runtime_version(API.read_text()) == runtime["version"]
    assert parse(API)  # pycep read the same file


@pytest.mark.parametrize(
    ("bicep", "expected"),
    [
        ("runtime: {\n  name: 'python'\n  version: '3.12'\n}", "3.12"),
        ("runtime: { name: 'python', version: '3.13' }", "3.13"),
        (
            "runtime: { name: 'node', version: '20' }\n"
            "runtime: { name: 'python', version: '3.11' }",
            "3.11",
        ),
        ("runtime: { name: 'python', version: pythonVersion }", None),
        ("runtime: { name: 'node', version: '3.12' }", None),
        (
            "runtime: { name: 'python', version: '3.12' }\n"
            "runtime: { name: 'python', version: '3.13' }",
            None,
        ),
        ("", None),
    ],
)
def test_runtime_version_reads_only_a_literal_python_version(
    bicep: str, expected: str | None
) -> None:
    assert hook.runtime_version(bicep) == expected


def test_without_a_readable_version_the_hook_says_so_and_succeeds(tmp_path: Path) -> None:
    done = run_hook(deployed_copy(tmp_path / "app"), "3")
    assert done.returncode == 0, done.stderr
    assert "compiled at each cold start instead" in done.stdout
    assert not list((tmp_path / "app").rglob("__pycache__"))


# -- what is deployed --------------------------------------------------------------------


def test_the_deployed_sources_are_the_app_and_the_channel_package() -> None:
    expected = {"function_app.py"} | {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "channel").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert {path.as_posix() for path in hook.deployed_sources(ROOT)} == expected


def test_funcignore_rules_follow_gitignore(tmp_path: Path) -> None:
    (tmp_path / ".funcignore").write_text(
        "# comment\n\nbuild/\n/top.py\n*.tmp.py\ndocs\n!docs/keep.py\nsub/one.py\n"
    )
    for relative in (
        "app.py",
        "top.py",
        "pkg/top.py",  # /top.py is anchored to the root
        "build/gone.py",
        "x.tmp.py",
        "pkg/y.tmp.py",
        "docs/keep.py",  # its folder is left out: a file inside cannot come back
        "sub/one.py",
        "sub/two.py",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    assert {path.as_posix() for path in hook.deployed_sources(tmp_path)} == {
        "app.py",
        "pkg/top.py",
        "sub/two.py",
    }
    rules = hook.ignore_rules(tmp_path)
    assert not hook.ignored(rules, hook.PurePosixPath("docs/keep.py"), is_dir=False)


# -- compiling ---------------------------------------------------------------------------


def source_hashes(interpreter: Path, root: Path, sources: Sequence[Path]) -> dict[str, str]:
    """importlib.util.source_hash of each source, as ``interpreter``'s import system keys it."""
    script = (
        "import importlib.util, json, pathlib, sys\n"
        "print(json.dumps({p: importlib.util.source_hash(pathlib.Path(p).read_bytes()).hex()"
        " for p in sys.argv[1:]}))"
    )
    done = subprocess.run(  # noqa: S603 - a Python found above
        [str(interpreter), "-c", script, *(path.as_posix() for path in sources)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    hashes: dict[str, str] = json.loads(done.stdout)
    return hashes


@pytest.mark.parametrize("version", VERSIONS)
def test_every_deployed_module_gets_a_checked_hash_pyc(tmp_path: Path, version: str) -> None:
    interpreter = require(version)
    root = deployed_copy(tmp_path / "app")
    done = run_hook(root, version, [interpreter.parent])
    assert done.returncode == 0, done.stdout + done.stderr
    sources = hook.deployed_sources(root)
    assert re.search(
        rf"^prepackage: {len(sources)} modules byte-compiled for Python {version} ",
        done.stdout,
        re.M,
    )
    tag = cache_tag(interpreter)
    assert tag == "cpython-" + version.replace(".", "")
    hashes = source_hashes(interpreter, root, sources)
    for source in sources:
        pyc = root / source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        header = pyc.read_bytes()[:16]
        flags = int.from_bytes(header[4:8], "little")
        assert flags == 0b11, (source, flags)  # hash-based (bit 0), checked (bit 1)
        assert header[8:16].hex() == hashes[source.as_posix()], source
    # Exactly the deployed modules: none for what .funcignore leaves out.
    compiled = {path.relative_to(root) for path in root.rglob("*.pyc")}
    assert len(compiled) == len(sources)
    assert not (root / "tests" / "__pycache__").exists()
    assert not (root / "tools" / "__pycache__").exists()


def test_python_312_loads_every_shipped_pyc_from_a_read_only_package(tmp_path: Path) -> None:
    # Python 3.12 (the Flex runtime's) has none of the app's dependencies here, so its own
    # import system loads each module's code without running it: the loader that
    # `import` uses, which reads a valid .pyc or else compiles the source.
    interpreter = require("3.12")
    root = deployed_copy(tmp_path / "app")
    sources = [path.as_posix() for path in hook.deployed_sources(root)]
    script = (
        "import importlib.machinery, sys\n"
        "for name, path in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    importlib.machinery.SourceFileLoader(name, path).get_code(name)\n"
    )
    modules = [(source[:-3].replace("/", "."), str(root / source)) for source in sources]
    command = [str(interpreter), "-v", "-c", script, *(arg for pair in modules for arg in pair)]
    before = files_under(root)
    plain = run_read_only(root, command, import_env())
    assert plain.returncode == 0, plain.stderr
    assert loaded_from(root, plain.stderr) == dict.fromkeys(sources, "source")
    assert files_under(root) == before  # read-only: nothing could be written

    assert run_hook(root, "3.12", [interpreter.parent]).returncode == 0
    shipped = run_read_only(root, command, import_env())
    assert shipped.returncode == 0, shipped.stderr
    assert loaded_from(root, shipped.stderr) == dict.fromkeys(sources, "pyc")


def test_a_read_only_app_imports_its_modules_from_the_shipped_pyc(tmp_path: Path) -> None:
    # This Python has the app's dependencies: `import function_app` as the worker does.
    root = deployed_copy(tmp_path / "app")
    command = [sys.executable, "-v", "-c", "import function_app"]
    before = files_under(root)
    plain = run_read_only(root, command, import_env())
    assert plain.returncode == 0, plain.stderr
    from_source = loaded_from(root, plain.stderr)
    assert "function_app.py" in from_source
    assert "channel/http.py" in from_source
    assert set(from_source.values()) == {"source"}
    assert files_under(root) == before

    assert run_hook(root, CURRENT).returncode == 0
    shipped = run_read_only(root, command, import_env())
    assert shipped.returncode == 0, shipped.stderr
    assert loaded_from(root, shipped.stderr) == dict.fromkeys(from_source, "pyc")


def test_an_edited_source_is_compiled_not_run_stale(tmp_path: Path) -> None:
    root = deployed_copy(tmp_path / "app")
    assert run_hook(root, CURRENT).returncode == 0
    logs = root / "channel" / "logs.py"
    logs.write_text(logs.read_text() + "\nEDITED_AFTER_PACKAGING = True\n")
    command = [
        sys.executable,
        "-v",
        "-c",
        "import function_app, channel.logs; assert channel.logs.EDITED_AFTER_PACKAGING",
    ]
    done = run_read_only(root, command, import_env())
    assert done.returncode == 0, done.stderr
    loaded = loaded_from(root, done.stderr)
    assert loaded.pop("channel/logs.py") == "source"
    assert loaded
    assert set(loaded.values()) == {"pyc"}


# -- no interpreter of that version ----------------------------------------------------


def test_without_that_python_the_hook_says_so_and_succeeds(tmp_path: Path) -> None:
    version = "3.12" if CURRENT != "3.12" else "3.13"
    empty = tmp_path / "bin"
    empty.mkdir()
    root = deployed_copy(tmp_path / "app")
    env = {**os.environ, "PATH": str(empty)}
    done = subprocess.run(  # noqa: S603 - our own hook, fixed arguments
        [sys.executable, str(HOOK), "--root", str(root), "--python-version", version],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        f"prepackage: Python {version} not found (python{version} on PATH); the package "
        "ships no byte-code of ours, so the app compiles its sources at each cold start instead."
    ]
    assert not list(root.rglob("__pycache__"))


def test_a_python_on_path_that_does_not_start_is_not_taken(tmp_path: Path) -> None:
    # As a pyenv shim for a version not selected: on PATH, but it exits non-zero.
    shim = tmp_path / "python3.12"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    assert hook.version_of([str(shim)]) is None
    assert hook.version_of([sys.executable]) == CURRENT


def test_on_windows_the_py_launcher_is_a_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = tmp_path / "py"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert hook.candidates("3.12", os_name="nt") == [[str(launcher), "-3.12"]]
    assert hook.candidates("3.12", os_name="posix") == []
