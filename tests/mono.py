"""Mono for the plugin tests: compiles plugin/src with the Microsoft.Xrm.Sdk stand-in.

Debian's ``mono-mcs`` (plus ``libmono-system-net-http4.0-cil`` for HttpClient) compiles C#
for .NET Framework; the tests build the plugin's own source together with
``tests/plugin/XrmStandIn.cs`` and ``tests/plugin/Harness.cs`` and run the harness with
``mono``. Without them the plugin tests are skipped (and fail under CI, where a skip
would hide that the plugin went untested).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = sorted((ROOT / "plugin" / "src").glob("*.cs"))
STAND_IN = ROOT / "tests" / "plugin" / "XrmStandIn.cs"
HARNESS = ROOT / "tests" / "plugin" / "Harness.cs"
APT_PACKAGES = "mono-mcs libmono-system-net-http4.0-cil"
UNAVAILABLE = f"mono not available: `apt-get install -y {APT_PACKAGES}` (Debian/Ubuntu)"
COMPILE_SECONDS = 120.0


@dataclass(frozen=True)
class Mono:
    """The C# compiler and the runtime, found on PATH."""

    mcs: str
    mono: str

    def compile(self, sources: list[Path], output: Path, *, target: str) -> None:
        """Compile ``sources`` (C# 7, warnings as errors) into ``output``, or fail the test."""
        result = subprocess.run(  # noqa: S603 - the compiler found on PATH, our own sources
            [
                self.mcs,
                "-langversion:7",
                f"-target:{target}",
                "-warnaserror+",
                "-r:System.Net.Http.dll",
                f"-out:{output}",
                *map(str, sources),
            ],
            capture_output=True,
            text=True,
            timeout=COMPILE_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"mcs failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def find_mono() -> Mono:
    """Mono's mcs and runtime; skips the test (fails under CI) when either is missing."""
    mcs, mono = shutil.which("mcs"), shutil.which("mono")
    missing = [name for name, path in (("mcs", mcs), ("mono", mono)) if path is None]
    if mono is not None:
        # <prefix>/bin/mono -> <prefix>/lib/mono/4.5: Debian ships System.Net.Http apart.
        net_http = Path(mono).resolve().parents[1] / "lib" / "mono" / "4.5" / "System.Net.Http.dll"
        if not net_http.is_file():
            missing.append(str(net_http))
    if missing or mcs is None or mono is None:
        reason = f"{UNAVAILABLE} ({', '.join(missing)} not found)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return Mono(mcs, mono)
