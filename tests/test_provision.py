"""python -m tools.provision against a fake Dataverse Web API on 127.0.0.1.

The sign-in is the real azure-identity (DefaultAzureCredential, through the managed-
identity endpoint of tests.fakes); the fake refuses any call that breaks the documented
shapes, and tests assert that list of refusals stays empty.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests.conftest import Configure
from tests.fake_webapi import CXP_ROLE_ID, ROOT_BU, FakeWebApi
from tests.fakes import FakeIdentity
from tools.provision.command import DIFFERENT, FAILED, OK, USAGE, main
from tools.provision.design import fixed_id

KEY = "provision-test-function-key-0001"
APP_CLIENT_ID = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"
FUNCTION_URL = "https://func-sms-contoso.azurewebsites.net"
OUTBOUND_URL = FUNCTION_URL + "/api/outbound"
NUMBER = "+14255550188"


@pytest.fixture
def webapi(httpserver: HTTPServer, identity: FakeIdentity) -> Iterator[FakeWebApi]:
    fake = FakeWebApi(httpserver, identity)
    yield fake
    assert not fake.rejected, fake.rejected


@pytest.fixture
def dll(tmp_path: Path) -> Path:
    path = tmp_path / "SmsChannel.Plugin.dll"
    path.write_bytes(b"MZ" + bytes(range(256)) * 8)
    return path


class Run:
    """One run of the command: its exit code and what it printed."""

    def __init__(self, code: int, lines: list[str]) -> None:
        self.code = code
        self.lines = lines
        self.text = "\n".join(lines)


@pytest.fixture
def provision(webapi: FakeWebApi, dll: Path, configure: Configure) -> Any:
    def run(*args: str, **environ: str) -> Run:
        lines: list[str] = []
        settings = {
            "DATAVERSE_URL": webapi.url,
            "CHANNEL_FUNCTION_URL": FUNCTION_URL,
            "CHANNEL_FUNCTION_KEY": KEY,
            "AZURE_CLIENT_ID": APP_CLIENT_ID,
            "CHANNEL_PLUGIN_DLL": str(dll),
            **environ,
        }
        code = main(list(args), environ=settings, out=lines.append)
        run = Run(code, lines)
        assert KEY not in run.text
        return run

    return run


def definition(webapi: FakeWebApi) -> dict[str, Any]:
    return webapi.record(
        "msdyn_channeldefinitions", fixed_id("SmsChannel", "msdyn_channeldefinition")
    )


def test_a_first_run_creates_everything(provision: Any, webapi: FakeWebApi, dll: Path) -> None:
    run = provision()
    assert run.code == OK, run.text
    assert "verified: everything is in place" in run.text

    (publisher,) = webapi.find("publishers", uniquename="smschannel")
    assert publisher["customizationprefix"] == "smsch"
    (solution,) = webapi.find("solutions", uniquename="SmsChannel")
    assert solution["_publisherid_value"] == publisher["publisherid"]

    for table, base in (
        ("smsch_smsinstance", "ChannelInstance"),
        ("smsch_smsaccount", "ChannelInstanceAccount"),
    ):
        assert table in webapi.entities
        relationship = webapi.relationships[f"msdyn_{base}_extendedentityid_{table}"]
        assert relationship["CascadeConfiguration"]["Delete"] == "RemoveLink"
        (read,) = webapi.find("privileges", name=f"prvRead{table}")
        assert webapi.role_privileges[CXP_ROLE_ID][read["privilegeid"]] == "Global"

    (assembly,) = webapi.find("pluginassemblies", name="SmsChannel.Plugin")
    assert base64.b64decode(assembly["content"]) == dll.read_bytes()
    assert assembly["isolationmode"] == 2
    (plugin_type,) = webapi.find("plugintypes", typename="SmsChannel.Plugin.OutboundForwarder")
    assert plugin_type["_pluginassemblyid_value"] == assembly["pluginassemblyid"]

    (api,) = webapi.find("customapis", uniquename="smsch_SmsOutbound")
    assert api["allowedcustomprocessingsteptype"] == 2
    assert (
        api.get("_plugintypeid_value") is None
    )  # the plugin runs in a step, not as main operation
    (parameter,) = webapi.find("customapirequestparameters", _customapiid_value=api["customapiid"])
    assert (parameter["uniquename"], parameter["type"], parameter["isoptional"]) == (
        "payload",
        10,
        False,
    )
    (output,) = webapi.find("customapiresponseproperties", _customapiid_value=api["customapiid"])
    assert (output["uniquename"], output["type"]) == ("response", 10)

    (message,) = webapi.find("sdkmessages", name="smsch_SmsOutbound")
    (step,) = webapi.find("sdkmessageprocessingsteps", _sdkmessageid_value=message["sdkmessageid"])
    assert (step["stage"], step["mode"]) == (40, 0)
    assert step["_eventhandler_value"] == plugin_type["plugintypeid"]
    assert step["configuration"] == OUTBOUND_URL
    secure = webapi.record(
        "sdkmessageprocessingstepsecureconfigs",
        step["_sdkmessageprocessingstepsecureconfigid_value"],
    )
    assert secure["secureconfig"] == KEY

    channel = definition(webapi)
    assert channel["msdyn_channeltype"] == "SMS"
    assert channel["msdyn_outboundendpointurltemplate"] == "/smsch_SmsOutbound"
    assert channel["msdyn_hasdeliveryreceipt"] is True
    assert channel["msdyn_hasinbound"] is True
    assert channel["msdyn_supportsaccount"] is True
    assert channel["msdyn_channeldefinitionexternalentity"] == "smsch_smsinstance"
    forms = {f["objecttypecode"]: f["formid"].lower() for f in webapi.rows["systemforms"].values()}
    assert channel["msdyn_channeldefinitionexternalformid"] == forms["smsch_smsinstance"]
    assert channel["msdyn_channeldefinitionaccountexternalformid"] == forms["smsch_smsaccount"]
    (part,) = webapi.find("msdyn_channelmessageparts", msdyn_name="text")
    assert part["_msdyn_channeldefinitionid_value"] == channel["msdyn_channeldefinitionid"]
    assert (part["msdyn_type"], part["msdyn_maxlength"]) == (192350000, 1000)

    held = {
        c["objectid"].lower()
        for c in webapi.find("solutioncomponents", _solutionid_value=solution["solutionid"])
    }
    for record in (
        assembly["pluginassemblyid"],
        plugin_type["plugintypeid"],
        api["customapiid"],
        step["sdkmessageprocessingstepid"],
        channel["msdyn_channeldefinitionid"],
        part["msdyn_channelmessagepartid"],
        webapi.entities["smsch_smsinstance"]["MetadataId"],
    ):
        assert record.lower() in held

    (user,) = webapi.find("systemusers", applicationid=APP_CLIENT_ID)
    assert user["_businessunitid_value"] == ROOT_BU
    assert webapi.user_roles[user["systemuserid"]] == {CXP_ROLE_ID}


def test_a_second_run_writes_nothing(provision: Any, webapi: FakeWebApi) -> None:
    assert provision().code == OK
    webapi.writes.clear()
    run = provision()
    assert run.code == OK, run.text
    assert webapi.writes == []
    assert "0 write(s) made" in run.text
    assert not [line for line in run.lines if line.startswith(("missing:", "differs:"))]


def test_records_changed_by_hand_are_put_back(provision: Any, webapi: FakeWebApi) -> None:
    assert provision().code == OK
    definition(webapi).update(msdyn_hasinbound=False, msdyn_outboundendpointurltemplate="/other")
    (step,) = webapi.rows["sdkmessageprocessingsteps"].values()
    step["configuration"] = "https://old.example/api/outbound"
    secure = webapi.record(
        "sdkmessageprocessingstepsecureconfigs",
        step["_sdkmessageprocessingstepsecureconfigid_value"],
    )
    secure["secureconfig"] = "an-old-key"
    webapi.writes.clear()

    run = provision()
    assert run.code == OK, run.text
    assert definition(webapi)["msdyn_hasinbound"] is True
    assert definition(webapi)["msdyn_outboundendpointurltemplate"] == "/smsch_SmsOutbound"
    assert step["configuration"] == OUTBOUND_URL
    assert secure["secureconfig"] == KEY
    secure_id = secure["sdkmessageprocessingstepsecureconfigid"]
    assert sorted(webapi.writes) == sorted(
        [
            f"PATCH msdyn_channeldefinitions({definition(webapi)['msdyn_channeldefinitionid']})",
            f"PATCH sdkmessageprocessingsteps({step['sdkmessageprocessingstepid']})",
            f"PATCH sdkmessageprocessingstepsecureconfigs({secure_id})",
        ]
    )
    assert (
        "differs: channel definition SMS (Azure Functions) "
        "(msdyn_hasinbound, msdyn_outboundendpointurltemplate)" in run.text
    )
    webapi.writes.clear()
    assert provision().code == OK
    assert webapi.writes == []


def test_a_dry_run_prints_the_writes_and_makes_none(provision: Any, webapi: FakeWebApi) -> None:
    run = provision("--dry-run")
    assert run.code == OK, run.text
    assert webapi.writes == []
    assert "would POST publishers" in run.text
    assert "would POST EntityDefinitions [MSCRM.SolutionUniqueName: SmsChannel]" in run.text
    assert "would POST customapis [MSCRM.SolutionUniqueName: SmsChannel]" in run.text
    assert '"secureconfig": "***"' in run.text
    assert '"content": "<base64 of the DLL>"' in run.text
    assert "would POST systemusers" in run.text
    planned = [line for line in run.lines if line.startswith("would ")]
    assert run.lines[-1] == f"{len(planned)} write(s) planned"
    # and it planned as many writes as a real first run makes
    assert provision().code == OK
    assert len(planned) == len(webapi.writes)


def test_check_reports_what_is_missing_or_different(provision: Any, webapi: FakeWebApi) -> None:
    empty = provision("--check")
    assert empty.code == DIFFERENT
    assert "missing: publisher smschannel" in empty.text
    assert webapi.writes == []
    assert provision().code == OK
    assert provision("--check").code == OK
    definition(webapi)["msdyn_hasdeliveryreceipt"] = False
    webapi.writes.clear()
    changed = provision("--check")
    assert changed.code == DIFFERENT
    assert (
        "differs: channel definition SMS (Azure Functions) (msdyn_hasdeliveryreceipt)"
        in changed.text
    )
    assert webapi.writes == []


def test_a_403_mid_run_names_the_privilege_and_a_rerun_completes(
    provision: Any, webapi: FakeWebApi
) -> None:
    webapi.deny("POST", r"^pluginassemblies$", "prvCreatePluginAssembly")
    failed = provision()
    assert failed.code == FAILED
    assert "the privilege prvCreatePluginAssembly is missing" in failed.text
    assert "run the same command again to resume" in failed.text
    assert webapi.find("publishers", uniquename="smschannel")  # what was done stays
    assert "smsch_smsinstance" in webapi.entities
    assert not webapi.rows["pluginassemblies"]
    webapi.denials.clear()
    resumed = provision()
    assert resumed.code == OK, resumed.text
    assert "ok: table smsch_smsinstance" in resumed.text
    assert webapi.find("customapis", uniquename="smsch_SmsOutbound")
    webapi.writes.clear()
    assert provision().code == OK
    assert webapi.writes == []


def test_a_failure_between_the_secure_configuration_and_its_step_resumes(
    provision: Any, webapi: FakeWebApi
) -> None:
    webapi.deny("POST", r"^sdkmessageprocessingsteps$", "prvCreateSdkMessageProcessingStep")
    assert provision().code == FAILED
    assert len(webapi.rows["sdkmessageprocessingstepsecureconfigs"]) == 1
    webapi.denials.clear()
    assert provision().code == OK
    assert len(webapi.rows["sdkmessageprocessingstepsecureconfigs"]) == 1
    assert len(webapi.rows["sdkmessageprocessingsteps"]) == 1


def test_a_custom_api_that_allows_no_steps_is_a_conflict(
    provision: Any, webapi: FakeWebApi
) -> None:
    assert provision().code == OK
    (api,) = webapi.find("customapis", uniquename="smsch_SmsOutbound")
    api["allowedcustomprocessingsteptype"] = 0
    run = provision()
    assert run.code == FAILED
    assert "allowedcustomprocessingsteptype=0, which cannot change after creation" in run.text


def test_the_test_send_calls_the_custom_api(provision: Any, webapi: FakeWebApi) -> None:
    seen: list[dict[str, Any]] = []

    def answer(name: str, payload: dict[str, Any]) -> dict[str, Any]:
        seen.append(payload)
        reply = {
            "ChannelDefinitionId": payload["ChannelDefinitionId"],
            "RequestId": payload["RequestId"],
            "MessageId": "SM1",
            "Status": "Sent",
        }
        return {"response": json.dumps(reply)}

    webapi.custom_api_handler = answer
    run = provision("--send-test", NUMBER, "--send-from", "12065550100")
    assert run.code == OK, run.text
    (payload,) = seen
    assert payload["To"] == NUMBER
    assert payload["ChannelDefinitionId"] == fixed_id("SmsChannel", "msdyn_channeldefinition")
    uuid.UUID(payload["RequestId"])
    assert "test send to **********88: Sent (MessageId SM1)" in run.text
    assert NUMBER not in run.text


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"CHANNEL_FUNCTION_KEY": ""}, "--function-key (or CHANNEL_FUNCTION_KEY) is required"),
        ({"CHANNEL_FUNCTION_URL": "https://10.1.2.3"}, "plugins cannot call IP addresses"),
        ({"CHANNEL_FUNCTION_URL": "https://localhost:7071"}, "plugins cannot call localhost"),
        ({"CHANNEL_FUNCTION_URL": "http://func.example"}, "must be an https URL"),
        ({"AZURE_CLIENT_ID": "not-a-guid"}, "--app-client-id must be a GUID"),
    ],
)
def test_bad_settings_are_named_before_any_call(
    provision: Any,
    webapi: FakeWebApi,
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str],
    problem: str,
) -> None:
    assert provision(**environ).code == USAGE
    assert problem in capsys.readouterr().err
    assert not webapi.server.log


def test_a_file_that_is_not_an_assembly_is_refused(
    provision: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "plugin.txt"
    text.write_text("not a dll")
    assert provision("--plugin-dll", str(text)).code == USAGE
    assert "is not a .NET assembly" in capsys.readouterr().err


def test_flags_win_over_the_environment(provision: Any, webapi: FakeWebApi) -> None:
    assert provision("--function-url", "https://other.example.com/api/outbound").code == OK
    (step,) = webapi.rows["sdkmessageprocessingsteps"].values()
    assert step["configuration"] == "https://other.example.com/api/outbound"


def test_without_a_client_id_the_application_user_is_skipped(
    provision: Any, webapi: FakeWebApi
) -> None:
    run = provision(AZURE_CLIENT_ID="")
    assert run.code == OK, run.text
    assert "skipped: application user" in run.text
    assert not webapi.rows["systemusers"]
