"""The azd postdeploy hook against a real HTTP server standing in for the deployed app."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from tests.bicep import ROOT
from tests.scripts import load_script

HOOK = ROOT / "infra" / "hooks" / "postdeploy.py"
CLIENT_ID = "5d1f4c3e-8a0b-4f3e-9c2d-1a2b3c4d5e6f"
HEALTHY = {
    "status": "ok",
    "provider": "twilio",
    "ledger": "table",
    "publicUrl": "https://func-sms-x.azurewebsites.net",
    "problems": [],
    "notes": [],
    "forwarding": {"pending": 0, "dead": 0},
}


hook = load_script("postdeploy", HOOK)


def azd_env(server: HTTPServer, **extra: str) -> dict[str, str]:
    return {
        "HEALTH_URL": server.url_for("/api/health"),
        "FUNCTION_APP_URL": server.url_for("/").rstrip("/"),
        "AZURE_CLIENT_ID": CLIENT_ID,
        "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
        "CHANNEL_PROVIDER": "twilio",
        **extra,
    }


def with_provision(root: Path) -> Path:
    """A repository root whose tools/provision prints the inputs it was given."""
    package = root / "tools" / "provision"
    package.mkdir(parents=True)
    (root / "tools" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import os, sys\n"
        "names = ('DATAVERSE_URL', 'CHANNEL_FUNCTION_URL', 'CHANNEL_APP_CLIENT_ID',"
        " 'CHANNEL_PLUGIN_DLL', 'CHANNEL_FUNCTION_KEY', 'AZURE_CLIENT_ID')\n"
        "print('provision got', *(os.environ.get(n) for n in names))\n"
        "sys.exit(3)\n"
    )
    return root


class Runs:
    """Records the provisioning commands the hook would run."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str], environ: Mapping[str, str]) -> int:
        self.commands.append(list(command))
        return 0


def test_healthy_app_without_the_provisioning_tool_prints_the_manual_step(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/api/health", method="GET").respond_with_json(HEALTHY)
    runs = Runs()
    code = hook.main(azd_env(httpserver), root=tmp_path, attempts=1, delay=0, run=runs)
    out = capsys.readouterr().out
    assert code == 0
    assert "health: HTTP 200, status ok, provider twilio, ledger table" in out
    assert f"application user for client id\n  {CLIENT_ID}" in out
    assert runs.commands == []


def test_problems_are_printed_and_fail_the_hook_after_bounded_attempts(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = {**HEALTHY, "status": "unavailable", "problems": ["DATAVERSE_URL is not set"]}
    report.pop("forwarding")
    httpserver.expect_request("/api/health").respond_with_json(report, status=503)
    code = hook.main(azd_env(httpserver), root=tmp_path, attempts=3, delay=0, run=Runs())
    out = capsys.readouterr().out
    assert code == 1
    assert len(httpserver.log) == 3
    assert "problem: DATAVERSE_URL is not set" in out
    assert "deployed but not ready" in out


def test_a_cold_app_is_asked_again_until_it_answers(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_ordered_request("/api/health").respond_with_data("starting", status=502)
    unreadable = {**HEALTHY, "forwarding": {"error": "the message ledger could not be read"}}
    httpserver.expect_ordered_request("/api/health").respond_with_json(unreadable)
    httpserver.expect_ordered_request("/api/health").respond_with_json(HEALTHY)
    code = hook.main(azd_env(httpserver), root=tmp_path, attempts=5, delay=0, run=Runs())
    assert code == 0
    assert len(httpserver.log) == 3
    assert capsys.readouterr().out.count("not ready yet") == 2


def test_an_unreachable_app_fails_the_hook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    env = azd_env(server)
    server.stop()  # nothing listens on that port any more
    assert hook.main(env, root=tmp_path, attempts=2, delay=0, run=Runs()) == 1
    assert "the app did not answer" in capsys.readouterr().out


def test_without_a_plugin_dll_it_says_what_the_provisioning_still_needs(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/api/health").respond_with_json(HEALTHY)
    runs = Runs()
    env = azd_env(httpserver, PLUGIN_DLL=str(tmp_path / "missing.dll"))
    code = hook.main(env, root=with_provision(tmp_path), attempts=1, delay=0, run=runs)
    out = capsys.readouterr().out
    assert code == 0
    assert runs.commands == []
    assert "PLUGIN_DLL (no file at" in out
    assert "azd env set PLUGIN_DLL" in out
    assert "azd hooks run postdeploy" in out


def test_with_every_input_it_runs_the_provisioning_with_the_azd_environment(
    httpserver: HTTPServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/api/health").respond_with_json(HEALTHY)
    root = with_provision(tmp_path)
    dll = tmp_path / "Channel.Plugin.dll"
    dll.write_bytes(b"MZ")
    env = azd_env(httpserver, PLUGIN_DLL=str(dll), CHANNEL_FUNCTION_KEY="key-for-tests")

    def run(command: Sequence[str], environ: Mapping[str, str]) -> int:
        assert command[1:] == ["-m", "tools.provision"]
        return int(hook.run_provision([sys.executable, *command[1:]], environ, cwd=root))

    code = hook.main(env, root=root, attempts=1, delay=0, run=run)
    out = capfd.readouterr().out
    assert code == 3  # the provisioning's own exit status
    # Under the command's own names; AZURE_CLIENT_ID (the app's identity) is not passed
    # on, or azure-identity would sign the command in as that identity.
    expected = f"{env['DATAVERSE_URL']} {env['FUNCTION_APP_URL']} {CLIENT_ID} {dll} key-for-tests"
    assert f"provision got {expected} None" in out


def test_the_names_the_hook_passes_are_those_the_provisioning_command_reads() -> None:
    from tools.provision.command import ENVIRONMENT

    read = {name for names in ENVIRONMENT.values() for name in names}
    passed = set(hook.provision_environment(dict.fromkeys(hook.PROVISION_INPUTS, "x")))
    assert read - {"AZURE_CLIENT_ID"} <= passed
    assert "AZURE_CLIENT_ID" not in passed


def test_acs_without_event_subscriptions_gets_the_step_that_creates_them(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/api/health").respond_with_json({**HEALTHY, "provider": "acs"})
    env = azd_env(httpserver, CHANNEL_PROVIDER="acs", ACS_RESOURCE_ID="/subscriptions/s/x")
    assert hook.main(env, root=tmp_path, attempts=1, delay=0, run=Runs()) == 0
    assert "azd env set ACS_EVENT_SUBSCRIPTIONS true" in capsys.readouterr().out
    env["ACS_EVENT_SUBSCRIPTIONS"] = "true"
    assert hook.main(env, root=tmp_path, attempts=1, delay=0, run=Runs()) == 0
    assert "ACS_EVENT_SUBSCRIPTIONS" not in capsys.readouterr().out


def test_acs_with_neither_key_nor_resource_warns_that_it_cannot_send(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/api/health").respond_with_json({**HEALTHY, "provider": "acs"})
    env = azd_env(httpserver, CHANNEL_PROVIDER="acs")
    assert hook.main(env, root=tmp_path, attempts=1, delay=0, run=Runs()) == 0
    assert "has no role on the ACS resource" in capsys.readouterr().out


def test_the_script_runs_on_a_bare_python_as_azd_runs_it(httpserver: HTTPServer) -> None:
    # -I -S: no site-packages and no project on the path, like the deploying machine's
    # Python: the hook needs the standard library only.
    httpserver.expect_request("/api/health").respond_with_data(
        json.dumps(HEALTHY), content_type="application/json"
    )
    env = {"HEALTH_URL": httpserver.url_for("/api/health"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-I", "-S", str(HOOK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status ok" in done.stdout
    assert "azd env set DATAVERSE_URL" in done.stdout
