"""The command line of ``python -m tools.provision``: settings, modes, exit codes."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import requests
from azure.core.credentials import TokenCredential

from tools.provision.design import CXP_ROLE, Design
from tools.provision.steps import MAX_ASSEMBLY_BYTES, Provisioner, Target
from tools.provision.webapi import ProvisionError, WebApi

OK, DIFFERENT, USAGE, FAILED = 0, 1, 2, 3
"""Exit codes: done (or nothing to do), --check found differences, bad input, a step failed."""

ENVIRONMENT = {
    "dataverse_url": ("DATAVERSE_URL",),
    "function_url": ("CHANNEL_FUNCTION_URL",),
    "function_key": ("CHANNEL_FUNCTION_KEY",),
    "app_client_id": ("CHANNEL_APP_CLIENT_ID", "AZURE_CLIENT_ID"),
    "plugin_dll": ("CHANNEL_PLUGIN_DLL",),
}
"""Each setting's environment variables, first found wins; a flag beats them all."""

EPILOG = """\
settings (a flag wins over its environment variable):
  --dataverse-url   DATAVERSE_URL          https://<org>.crm.dynamics.com
  --function-url    CHANNEL_FUNCTION_URL   the Function App's URL (https://<app>.azurewebsites.net);
                                           /api/outbound is added when no path is given
  --function-key    CHANNEL_FUNCTION_KEY   the outbound function's key (goes into the step's
                                           secure configuration; never printed)
  --app-client-id   CHANNEL_APP_CLIENT_ID, then AZURE_CLIENT_ID
                                           client id of the Function App's managed identity
                                           (the application user); without it that step is skipped
  --plugin-dll      CHANNEL_PLUGIN_DLL     plugin/bin/Release/net462/SmsChannel.Plugin.dll

Sign-in: DefaultAzureCredential (az login, a service principal through AZURE_CLIENT_ID /
AZURE_TENANT_ID / AZURE_CLIENT_SECRET, or a managed identity), token for <DATAVERSE_URL>/.default.
The identity must be a System Administrator of the environment.

Exit codes: 0 done (nothing left to do), 1 --check found something missing or different,
2 bad settings, 3 a step failed: what was done stays in place; fix the cause and run the
same command again to resume.
"""


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="python -m tools.provision",
        description=(
            "Create or update, in a Dataverse environment, everything the SMS channel needs: "
            "publisher and solution, the two extended configuration tables and their "
            "relationships, Read for 'Cxp Channel Definitions Services User', the plugin "
            "assembly, type and step, the outbound custom API, the channel definition and its "
            "'text' message part, and the Function App's application user. A second run "
            "changes nothing."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataverse-url", help="the environment's URL (DATAVERSE_URL)")
    p.add_argument("--function-url", help="the Function App's URL (CHANNEL_FUNCTION_URL)")
    p.add_argument("--function-key", help="the outbound function key (CHANNEL_FUNCTION_KEY)")
    p.add_argument(
        "--app-client-id", help="the managed identity's client id (CHANNEL_APP_CLIENT_ID)"
    )
    p.add_argument("--plugin-dll", type=Path, help="the built plugin (CHANNEL_PLUGIN_DLL)")
    p.add_argument("--prefix", default="smsch", help="publisher prefix of tables and API (smsch)")
    p.add_argument("--publisher", default="smschannel", help="publisher unique name (smschannel)")
    p.add_argument("--solution", default="SmsChannel", help="solution unique name (SmsChannel)")
    p.add_argument("--option-value-prefix", type=int, default=72_700, help="publisher's (72700)")
    p.add_argument("--channel-name", default="SMS (Azure Functions)", help="shown in the SMS setup")
    p.add_argument(
        "--app-user-role", default=CXP_ROLE, help=f"role of the application user ({CXP_ROLE})"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="read, print every write, write nothing"
    )
    mode.add_argument("--check", action="store_true", help="report what is missing or different")
    p.add_argument(
        "--send-test", metavar="NUMBER", help="after provisioning, send one SMS to NUMBER"
    )
    p.add_argument(
        "--send-from", metavar="SENDER", help="the sender for --send-test (a channel instance)"
    )
    return p


class UsageError(Exception):
    """A setting is missing or wrong."""


def setting(args: argparse.Namespace, name: str, environ: Mapping[str, str]) -> str | None:
    """A flag's value, else the first of its environment variables that is set."""
    value = getattr(args, name)
    if value:
        return str(value)
    for variable in ENVIRONMENT[name]:
        if environ.get(variable, "").strip():
            return environ[variable].strip()
    return None


def outbound_url(value: str) -> str:
    """The outbound function's URL; the sandbox reaches only DNS names over HTTPS/HTTP."""
    parts = urlsplit(value.strip())
    host = parts.hostname or ""
    if parts.scheme != "https" or not host:
        raise UsageError(f"--function-url must be an https URL, not {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise UsageError("--function-url: plugins cannot call IP addresses; use the DNS name")
    if host == "localhost" or host.endswith(".localhost"):
        raise UsageError("--function-url: plugins cannot call localhost")
    path = parts.path.rstrip("/") or "/api/outbound"
    return parts._replace(path=path, query="", fragment="").geturl()


def dataverse_url(value: str) -> str:
    """The environment's base URL, without a trailing slash or API path."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(f"--dataverse-url must be the environment's URL, not {value!r}")
    return f"{parts.scheme}://{parts.netloc}"


def read_target(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, Target]:
    """The Dataverse URL and the deployment's values, or UsageError naming each problem."""
    problems = []
    values = {name: setting(args, name, environ) for name in ENVIRONMENT}
    for name in ("dataverse_url", "function_url", "function_key", "plugin_dll"):
        if not values[name]:
            flag = "--" + name.replace("_", "-")
            problems.append(f"{flag} (or {ENVIRONMENT[name][0]}) is required")
    url = function_url = ""
    dll = b""
    try:
        url = dataverse_url(values["dataverse_url"] or "") if values["dataverse_url"] else ""
        function_url = outbound_url(values["function_url"] or "") if values["function_url"] else ""
    except UsageError as error:
        problems.append(str(error))
    if values["plugin_dll"]:
        path = Path(values["plugin_dll"])
        try:
            dll = path.read_bytes()
        except OSError as error:
            problems.append(f"--plugin-dll {path}: {error.strerror}")
        else:
            if not dll.startswith(b"MZ"):
                problems.append(f"--plugin-dll {path} is not a .NET assembly (build plugin/ first)")
            elif len(dll) > MAX_ASSEMBLY_BYTES:
                problems.append(f"--plugin-dll {path} is over Dataverse's 16 MB")
    client_id = values["app_client_id"]
    if client_id:
        try:
            client_id = str(uuid.UUID(client_id))
        except ValueError:
            problems.append(f"--app-client-id must be a GUID, not {client_id!r}")
    if args.send_test and not args.send_from:
        problems.append("--send-test needs --send-from (a sender number of a channel instance)")
    if problems:
        raise UsageError("\n".join(problems))
    target = Target(
        function_url=function_url,
        function_key=values["function_key"] or "",
        plugin_dll=dll,
        app_client_id=client_id,
        app_user_role=args.app_user_role,
    )
    return url, target


def default_credential() -> TokenCredential:
    """DefaultAzureCredential: az login, a service principal or a managed identity."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    credential: Callable[[], TokenCredential] = default_credential,
    out: Callable[[str], None] = print,
) -> int:
    """Run the command; returns its exit code."""
    args = parser().parse_args(argv)
    try:
        url, target = read_target(args, os.environ if environ is None else environ)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE
    design = Design(
        prefix=args.prefix,
        publisher=args.publisher,
        solution=args.solution,
        channel_name=args.channel_name,
        option_value_prefix=args.option_value_prefix,
    )
    dry = args.dry_run or args.check
    with requests.Session() as session:
        api = WebApi(
            url,
            credential(),
            dry_run=dry,
            session=session,
            secrets=(target.function_key,),
            report=out if args.dry_run else (lambda line: None),
        )
        try:
            Provisioner(api, design, target, say=out).run()
            if dry:
                changes = len(api.writes)
                out(f"{changes} write(s) {'planned' if args.dry_run else 'needed'}")
                return DIFFERENT if args.check and changes else OK
            out(f"{len(api.writes)} write(s) made")
            verify(api, design, target)
            out("verified: everything is in place")
            if args.send_test:
                send_test(api, design, args.send_test, args.send_from, out)
        except ProvisionError as error:
            out(f"error: {error}")
            out(
                "Everything written before this step stays in place; fix the cause and run "
                "the same command again to resume."
            )
            return FAILED
    return OK


def verify(api: WebApi, design: Design, target: Target) -> None:
    """Read everything back: a dry rerun must find nothing to write."""
    lines: list[str] = []
    check = replace(api, dry_run=True, writes=[], report=lambda line: None)
    Provisioner(check, design, target, say=lines.append).run()
    if check.writes:
        left = [line for line in lines if not line.startswith("ok: ")]
        raise ProvisionError("verification found differences after the run: " + "; ".join(left))


def send_test(
    api: WebApi, design: Design, number: str, sender: str, out: Callable[[str], None]
) -> None:
    """Call the outbound custom API once, end to end (plugin -> Function App -> provider)."""
    payload = {
        "ChannelDefinitionId": design.channel_definition_id,
        "RequestId": str(uuid.uuid4()),
        "From": sender,
        "To": number,
        "Message": {"text": "Test message from the SMS channel's provisioning command"},
    }
    answer = api.call(design.custom_api, {"payload": json.dumps(payload)})
    try:
        response = json.loads(answer["response"])
        status = response["Status"]
    except (KeyError, TypeError, ValueError) as error:
        raise ProvisionError(
            f"the custom API answered without a usable response: {answer!r}"
        ) from error
    out(f"test send to {mask(number)}: {status} (MessageId {response.get('MessageId')})")
    if status != "Sent":
        raise ProvisionError(f"the test message was not sent: Status {status}")


def mask(number: str) -> str:
    """A phone number with all but its last two digits hidden."""
    return "*" * max(0, len(number) - 2) + number[-2:]
