"""azd postdeploy hook: check the deployed app's health, then show (or run) the next step.

azd runs it after every `azd deploy` / `azd up`, with the azd environment (the values set
with `azd env set` and the Bicep outputs) in the process environment. Standard library
only: it runs on the deploying machine's Python, not in the app's virtual environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ATTEMPTS = 12
"""Health checks before giving up: a fresh Flex app needs a cold start, and new role
assignments (Key Vault, Table Storage) can take minutes to reach the app."""
DELAY_SECONDS = 10.0
TIMEOUT_SECONDS = 30.0
PROVISION_INPUTS = (
    "DATAVERSE_URL",
    "FUNCTION_APP_URL",
    "AZURE_CLIENT_ID",
    "PLUGIN_DLL",
    "CHANNEL_FUNCTION_KEY",
)
PROVISION_NAMES = {
    "FUNCTION_APP_URL": "CHANNEL_FUNCTION_URL",
    "AZURE_CLIENT_ID": "CHANNEL_APP_CLIENT_ID",
    "PLUGIN_DLL": "CHANNEL_PLUGIN_DLL",
}
"""azd's names for the provisioning command's inputs -> the names the command reads."""

Report = dict[str, object]
Run = Callable[[Sequence[str], Mapping[str, str]], int]


def fetch_health(url: str, timeout: float = TIMEOUT_SECONDS) -> tuple[int, Report | None]:
    """GET the health URL once: (HTTP status or 0 when unreachable, the JSON report)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, headers={"accept": "application/json"})  # noqa: S310 (scheme checked above)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, body = int(response.status), response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, None
    try:
        report = json.loads(body)
    except ValueError:
        return status, None
    return status, report if isinstance(report, dict) else None


def ready(status: int, report: Report | None) -> bool:
    """True when the app answers 200 and its ledger could be read."""
    if status != 200 or report is None:
        return False
    forwarding = report.get("forwarding")
    return not (isinstance(forwarding, dict) and "error" in forwarding)


def wait_for_health(
    url: str, attempts: int = ATTEMPTS, delay: float = DELAY_SECONDS
) -> tuple[int, Report | None]:
    """Check health up to ``attempts`` times, ``delay`` seconds apart; the last answer."""
    status, report = 0, None
    for attempt in range(1, attempts + 1):
        status, report = fetch_health(url)
        if ready(status, report):
            break
        if attempt < attempts:
            print(f"  not ready yet (HTTP {status or 'unreachable'}); again in {delay:g} s")
            time.sleep(delay)
    return status, report


def describe(status: int, report: Report | None) -> list[str]:
    """The health answer in plain lines: status, provider, ledger, problems, notes."""
    if report is None:
        return [f"health: HTTP {status}" if status else "health: the app did not answer"]
    lines = [
        f"health: HTTP {status}, status {report.get('status')}, provider "
        f"{report.get('provider')}, ledger {report.get('ledger')}"
    ]
    if report.get("publicUrl"):
        lines.append(f"  public URL: {report['publicUrl']}")
    lines += [f"  problem: {problem}" for problem in _strings(report.get("problems"))]
    lines += [f"  note: {note}" for note in _strings(report.get("notes"))]
    forwarding = report.get("forwarding")
    if isinstance(forwarding, dict) and "error" in forwarding:
        lines.append(f"  ledger: {forwarding['error']}")
    return lines


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def provision_python(root: Path = ROOT) -> str:
    """The project's virtualenv Python when there is one (it has the dependencies)."""
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.exists():
            return str(candidate)
    return sys.executable


def next_steps(environ: Mapping[str, str], root: Path = ROOT) -> tuple[list[str], bool]:
    """What to do after a healthy deploy; True when the Dataverse provisioning can run now."""
    lines: list[str] = []
    if environ.get("CHANNEL_PROVIDER", "").lower() == "acs":
        lines += _acs_steps(environ)
    if not environ.get("DATAVERSE_URL"):
        lines.append(
            "Next: azd env set DATAVERSE_URL https://<org>.crm.dynamics.com, then azd provision."
        )
        return lines, False
    client_id = environ.get("AZURE_CLIENT_ID", "<the app identity's client id>")
    if not (root / "tools" / "provision").is_dir():
        lines += [
            "Next: in the Power Platform admin center, add an application user for client id",
            f"  {client_id} to {environ['DATAVERSE_URL']}, then register the channel and its",
            "  plugin (README: 'Calling outbound from Dataverse').",
        ]
        return lines, False
    missing = [name for name in PROVISION_INPUTS if not environ.get(name)]
    dll = environ.get("PLUGIN_DLL")
    if dll and not Path(dll).is_file():
        missing.append(f"PLUGIN_DLL (no file at {dll})")
    if not missing:
        return lines, True
    lines += [
        "Next: provision Dataverse (the channel, its plugin and custom API, and the application",
        f"  user for client id {client_id}) with python -m tools.provision. It still needs:",
        *(f"    {name}" for name in missing),
        "  Build the plugin (plugin/), then:",
        "    azd env set PLUGIN_DLL <path to the built plugin DLL>",
        "    azd env set CHANNEL_FUNCTION_KEY $(az functionapp keys list -g "
        f"{environ.get('AZURE_RESOURCE_GROUP', '<resource group>')} -n "
        f"{environ.get('FUNCTION_APP_NAME', '<function app>')} "
        "--query functionKeys.default -o tsv)",
        "    azd hooks run postdeploy",
    ]
    return lines, False


def provision_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The azd environment as the provisioning command reads it.

    AZURE_CLIENT_ID (the app's identity) moves to CHANNEL_APP_CLIENT_ID and is removed:
    under its own name, azure-identity would take it for the identity to sign in with.
    """
    env = {name: value for name, value in environ.items() if name != "AZURE_CLIENT_ID"}
    for azd_name, tool_name in PROVISION_NAMES.items():
        if environ.get(azd_name):
            env[tool_name] = environ[azd_name]
    return env


def _acs_steps(environ: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    if not environ.get("ACS_RESOURCE_ID"):
        if not environ.get("ACS_ACCESS_KEY"):
            lines.append(
                "Warning: neither ACS_ACCESS_KEY nor ACS_RESOURCE_ID is set: the app's identity "
                "has no role on the ACS resource and cannot send. azd env set ACS_RESOURCE_ID "
                "<resource id>, then azd provision."
            )
        lines.append(
            "ACS delivery reports and replies: set ACS_RESOURCE_ID and CHANNEL_WEBHOOK_SECRET, "
            "then azd env set ACS_EVENT_SUBSCRIPTIONS true and azd provision."
        )
    elif environ.get("ACS_EVENT_SUBSCRIPTIONS", "").lower() != "true":
        lines.append(
            "ACS delivery reports and replies: now that the app answers, run "
            "azd env set ACS_EVENT_SUBSCRIPTIONS true and azd provision (Event Grid checks "
            "the webhooks when the subscriptions are created)."
        )
    return lines


def run_provision(command: Sequence[str], environ: Mapping[str, str], cwd: Path = ROOT) -> int:
    """Run the provisioning command with the azd environment; its exit status."""
    # Our own command line, from the repository root (where tools/ is a package).
    done = subprocess.run(list(command), env=dict(environ), cwd=cwd, check=False)  # noqa: S603
    return done.returncode


def main(
    environ: Mapping[str, str] | None = None,
    *,
    root: Path = ROOT,
    attempts: int = ATTEMPTS,
    delay: float = DELAY_SECONDS,
    run: Run = run_provision,
) -> int:
    """The hook: 0 when the app is healthy (and provisioning, if run, succeeded)."""
    env = os.environ if environ is None else environ
    url = env.get("HEALTH_URL") or (
        f"{env['FUNCTION_APP_URL'].rstrip('/')}/api/health" if env.get("FUNCTION_APP_URL") else ""
    )
    if not url:
        print("HEALTH_URL is not in the azd environment: run azd provision first.")
        return 1
    print(f"Checking {url}")
    status, report = wait_for_health(url, attempts, delay)
    for line in describe(status, report):
        print(line)
    if not ready(status, report):
        print(
            "The app is deployed but not ready. Fix what health lists (azd env set NAME value, "
            "then azd provision), or look at the app's logs in Application Insights."
        )
        return 1
    lines, can_provision = next_steps(env, root)
    for line in lines:
        print(line)
    if can_provision:
        command = [provision_python(root), "-m", "tools.provision"]
        print(f"Provisioning Dataverse: {' '.join(command)}")
        return run(command, provision_environment(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
