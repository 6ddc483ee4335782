"""The Python versions the app installs on (3.11-3.13) and the message on any other."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> list[Requirement]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    ("python", "functions_version"),
    [("3.11", "1.26.0"), ("3.12", "1.26.0"), ("3.13", "2.3.0")],
)
def test_exactly_one_azure_functions_requirement_applies_to_each_version(
    python: str, functions_version: str
) -> None:
    environment = {"python_version": python, "python_full_version": python + ".0"}
    applying = [
        r
        for r in _requirements()
        if r.name == "azure-functions" and (r.marker is None or r.marker.evaluate(environment))
    ]
    assert len(applying) == 1, applying
    # 1.x stops at 3.12 and 2.x starts at 3.13: each version must get the line it can install.
    assert applying[0].specifier.contains(Version(functions_version))


def _unsupported_python() -> str | None:
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    found = sorted(glob.glob(f"{root}/versions/3.10*/bin/python3.10"))
    return found[-1] if found else None


def test_make_refuses_an_unsupported_python_with_a_clear_message() -> None:
    python = _unsupported_python()
    if python is None:
        pytest.skip("no Python 3.10 under pyenv to try")
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(  # noqa: S603 - our own Makefile, fixed arguments
        [make, "--no-print-directory", "python-check", f"PYTHON={python}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "Python 3.10 is not supported: use Python 3.11, 3.12 or 3.13" in done.stderr
    assert "Traceback" not in done.stderr
