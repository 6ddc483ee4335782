"""The azd template: Bicep under infra/ parsed and checked, and its settings against config."""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from channel.config import Settings
from channel.providers import PROVIDER_IDS
from tests.bicep import (
    INFRA,
    MAIN,
    ROOT,
    Deployment,
    azd_name,
    bicep_files,
    condition,
    config,
    mentions,
    module_of,
    parse,
    resources,
    walk,
)

API = INFRA / "app" / "api.bicep"
STORAGE = INFRA / "app" / "storage.bicep"
KEYVAULT = INFRA / "app" / "keyvault.bicep"
MONITORING = INFRA / "app" / "monitoring.bicep"
ACS = INFRA / "app" / "acs.bicep"

CLIENT_ID = "5d1f4c3e-8a0b-4f3e-9c2d-1a2b3c4d5e6f"
# What Azure returns for the properties the template reads back.
AZURE_OUTPUTS = {
    ("main", "resourceToken"): "x1y2z3",
    ("identity", "identity.properties.clientId"): CLIENT_ID,
    ("identity", "identity.properties.principalId"): "0c1d2e3f-0000-4000-8000-000000000001",
    ("identity", "identity.id"): "/subscriptions/s/resourceGroups/rg/providers/x/id-sms",
    ("storage", "account.properties.primaryEndpoints.table"): "https://stx.table.core.windows.net/",
    ("storage", "account.properties.primaryEndpoints.blob"): "https://stx.blob.core.windows.net/",
    ("monitoring", "applicationInsights.properties.ConnectionString"): "InstrumentationKey=k",
    ("api", "site.properties.defaultHostName"): "func-sms-x.azurewebsites.net",
    ("api", "site.name"): "func-sms-x",
}
# The Azure platform sets these itself; the template must not.
PLATFORM_PROVIDED = {
    "WEBSITE_INSTANCE_ID": "0a1b2c",
    "WEBSITE_HOSTNAME": "func-sms-x.azurewebsites.net",
}
# Settings the template writes for the Functions host or the Python worker, not the app.
HOST_SETTINGS = re.compile(r"AzureWebJobsStorage__\w+|(PYTHON_)?APPLICATIONINSIGHTS_\w+")
# Settings the app reads that the template leaves unset, and why. A new setting in
# channel/config.py must be written by the template or listed here.
NOT_WRITTEN = {
    "WEBSITE_INSTANCE_ID": "set by Azure",
    "WEBSITE_HOSTNAME": "set by Azure (the public URL's fallback)",
    "CHANNEL_STORAGE_CONNECTION": "the ledger is reached with the identity (CHANNEL_STORAGE_URL)",
    "CHANNEL_LEDGER_PATH": "the embedded ledger is for local runs only",
    "TWILIO_BASE_URL": "for tests against a local fake",
    "VONAGE_BASE_URL": "for tests against a local fake",
    "TELNYX_BASE_URL": "for tests against a local fake",
    "PLIVO_BASE_URL": "for tests against a local fake",
    "CHANNEL_MESSAGE_PART": "the default (text) is what SMS channels use",
    "CHANNEL_TIME_BUDGET_SECONDS": "the default fits the plugin's timeout",
    "CHANNEL_AMBIGUOUS_GRACE_SECONDS": "the default is tied to the provider",
    "CHANNEL_RETENTION_DAYS": "the default",
    "CHANNEL_MAX_SEGMENTS": "optional; unset means no limit",
}


def _rsa_private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


def _ed25519_public_b64() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


# What a user sets with `azd env set` for each provider (the README's deploy section).
AZD_ENV = {
    "common": {
        "AZURE_ENV_NAME": "sms-test",
        "AZURE_LOCATION": "eastus2",
        "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
    },
    "twilio": {
        "CHANNEL_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
        "TWILIO_AUTH_TOKEN": "twilio-token-value",
    },
    "acs": {
        "CHANNEL_PROVIDER": "acs",
        "ACS_ENDPOINT": "https://contoso.communication.azure.com",
        "ACS_RESOURCE_ID": "/subscriptions/s/resourceGroups/acs-rg/providers/"
        "Microsoft.Communication/communicationServices/contoso",
        "CHANNEL_WEBHOOK_SECRET": "webhook-secret-value",
    },
    "vonage": {
        "CHANNEL_PROVIDER": "vonage",
        "VONAGE_APPLICATION_ID": "aaaaaaaa-bbbb-cccc-dddd-123456789abc",
        "VONAGE_PRIVATE_KEY": _rsa_private_pem(),
        "VONAGE_SIGNATURE_SECRET": "vonage-signature-secret-value",
    },
    "telnyx": {
        "CHANNEL_PROVIDER": "telnyx",
        "TELNYX_API_KEY": "telnyx-api-key-value",
        "TELNYX_PUBLIC_KEY": _ed25519_public_b64(),
    },
    "sinch": {
        "CHANNEL_PROVIDER": "sinch",
        "SINCH_SERVICE_PLAN_ID": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
        "SINCH_API_TOKEN": "sinch-api-token-value",
        "SINCH_WEBHOOK_SECRET": "sinch-webhook-secret-value",
    },
    "plivo": {
        "CHANNEL_PROVIDER": "plivo",
        "PLIVO_AUTH_ID": "MAZDQ1ZDA0YJQ5ZJK0MZ",
        "PLIVO_AUTH_TOKEN": "plivo-auth-token-value",
    },
    "loopback": {"CHANNEL_PROVIDER": "loopback"},
}
ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": (STORAGE, "Microsoft.Storage/storageAccounts"),
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": (STORAGE, "Microsoft.Storage/storageAccounts"),
    "3913510d-42f4-4e42-8a64-420c390055eb": (MONITORING, "Microsoft.Insights/components"),
    "4633458b-17de-408a-b874-0445c86b69e6": (KEYVAULT, "Microsoft.KeyVault/vaults"),
    "09976791-48a7-449e-bb21-39d1a415f350": (ACS, "Microsoft.Communication/communicationServices"),
}
"""Blob Data Owner, Table Data Contributor, Monitoring Metrics Publisher, Key Vault Secrets
User, Communication and Email Service Owner: role id -> (file, type of the scope)."""


def azd_env(provider: str, **extra: str) -> dict[str, str]:
    """The azd environment of a user who chose ``provider``."""
    return {**AZD_ENV["common"], **AZD_ENV[provider], **extra}


def site() -> dict[str, Any]:
    """The Function App resource."""
    (entry,) = resources(API, "Microsoft.Web/sites").values()
    return entry


def app_settings(deployment: Deployment) -> dict[str, str]:
    """The app settings the template writes, as the Function App would see them."""
    loop = config(site())["properties"]["siteConfig"]["appSettings"]
    # The site takes every entry of one object, as name/value pairs.
    assert loop["loop_type"]["detail"]["array_name"]["function"]["type"] == "items"
    assert loop["config"] == {
        "name": {
            "operator": {
                "type": "property_accessor",
                "operands": {"operand_1": "setting", "operand_2": "key"},
            }
        },
        "value": {
            "operator": {
                "type": "property_accessor",
                "operands": {"operand_1": "setting", "operand_2": "value"},
            }
        },
    }
    assert loop["loop_type"]["detail"]["item_name"] == "setting"
    source = loop["loop_type"]["detail"]["array_name"]["function"]["parameters"]["arg_1"]
    settings: dict[str, str] = deployment.eval(API, source)
    return settings


def deployed(provider: str, **extra: str) -> dict[str, str]:
    """The app settings for a user of ``provider``, Key Vault references resolved."""
    env = azd_env(provider, **extra)
    settings = app_settings(Deployment(env, AZURE_OUTPUTS))
    return {name: resolve_reference(value, env) for name, value in settings.items()}


def resolve_reference(value: str, env: Mapping[str, str]) -> str:
    """What App Service reads for a Key Vault reference: the secret's value."""
    match = re.fullmatch(r"@Microsoft\.KeyVault\(VaultName=([^;]+);SecretName=([^)]+)\)", value)
    if match is None:
        return value
    secret = secret_resources()[match.group(2)]
    return str(Deployment(env, AZURE_OUTPUTS).eval(KEYVAULT, secret["properties"]["value"]))


def secret_resources() -> dict[str, dict[str, Any]]:
    """Key Vault secrets by secret name."""
    found = resources(KEYVAULT, "Microsoft.KeyVault/vaults/secrets").values()
    return {config(entry)["name"]: config(entry) for entry in found}


class RecordingEnviron(Mapping[str, str]):
    """An environment that records every name the settings reader looks up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("config iterated the environment: teach test_infra its names")

    def __len__(self) -> int:
        return len(self._values)


def names_config_reads() -> set[str]:
    """Every setting name channel/config.py reads, whichever provider is chosen."""
    read: set[str] = set()
    for provider in PROVIDER_IDS:
        environ = RecordingEnviron({"CHANNEL_PROVIDER": provider, **PLATFORM_PROVIDED})
        Settings.from_env(environ)
        read |= environ.read
    return read


def secret_names() -> set[str]:
    """The settings config keeps out of its repr: secrets (found by tracing sentinels)."""
    names = names_config_reads()
    environ = {name: f"sentinel-{name}" for name in names}
    settings = Settings.from_env(environ)
    # The channel-wide settings and each provider's own (Settings.providers).
    holders = [settings, *settings.providers.values()]
    values = {
        getattr(holder, f.name)
        for holder in holders
        if dataclasses.is_dataclass(holder)
        for f in dataclasses.fields(holder)
        if not f.repr
    }
    return {name for name in names if f"sentinel-{name}" in values}


# --- the template's shape -------------------------------------------------------------


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses_and_every_module_exists(path: Path) -> None:
    parsed = parse(path)
    for name, module in parsed.get("modules", {}).items():
        assert (path.parent / module["detail"]["path"]).is_file(), name
    if path != MAIN:
        module_of(path)  # deployed by main.bicep


def test_main_creates_the_resource_group_at_subscription_scope() -> None:
    parsed = parse(MAIN)
    assert parsed["globals"]["scope"]["value"] == "subscription"
    assert list(resources(MAIN, "Microsoft.Resources/resourceGroups")) == ["rg"]


def test_the_plan_is_flex_consumption_on_linux() -> None:
    (plan,) = resources(API, "Microsoft.Web/serverfarms").values()
    body = config(plan)
    assert body["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert body["properties"]["reserved"] is True
    app = config(site())
    assert app["kind"] == "functionapp,linux"
    assert mentions(app["properties"]["serverFarmId"], "plan")


def test_the_runtime_is_python_312_deployed_from_blob_with_the_identity() -> None:
    flex = config(site())["properties"]["functionAppConfig"]
    assert flex["runtime"] == {"name": "python", "version": "3.12"}
    storage = flex["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert storage["authentication"]["userAssignedIdentityResourceId"] == "identityId"
    # The container it deploys from is the one storage.bicep creates.
    assert mentions(storage["value"], "deploymentContainerName")
    _, call = module_of(STORAGE)
    _, api_call = module_of(API)
    assert (
        config(call)["params"]["deploymentContainerName"]
        == config(api_call)["params"]["deploymentContainerName"]
    )


def test_the_app_is_https_only_tls_12_without_ftp_or_basic_auth() -> None:
    app = config(site())["properties"]
    assert app["httpsOnly"] is True
    assert app["siteConfig"]["minTlsVersion"] == "1.2"
    assert app["siteConfig"]["ftpsState"] == "Disabled"
    policies = resources(API, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {config(p)["name"]: config(p)["properties"]["allow"] for p in policies.values()} == {
        "ftp": False,
        "scm": False,
    }


def test_the_app_runs_as_the_user_assigned_identity() -> None:
    app = config(site())
    assert app["identity"]["type"] == "UserAssigned"
    assert list(app["identity"]["userAssignedIdentities"]) == ["'${identityId}'"]
    assert app["properties"]["keyVaultReferenceIdentity"] == "identityId"
    _, call = module_of(API)
    assert mentions(config(call)["params"]["identityId"], "identity")
    settings = deployed("twilio")
    assert settings["AZURE_CLIENT_ID"] == CLIENT_ID
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == CLIENT_ID
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        f"ClientId={CLIENT_ID};Authorization=AAD"
    )
    # The worker exports the app's OpenTelemetry spans and metrics (see host.json).
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"


def test_storage_refuses_shared_keys_and_old_tls() -> None:
    (account,) = resources(STORAGE, "Microsoft.Storage/storageAccounts").values()
    properties = config(account)["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True


def test_the_ledger_table_is_created_and_named_in_the_settings() -> None:
    (table,) = resources(STORAGE, "Microsoft.Storage/storageAccounts/tableServices/tables").values()
    env = azd_env("twilio")
    name = Deployment(env, AZURE_OUTPUTS).eval(STORAGE, config(table)["name"])
    settings = deployed("twilio")
    assert settings["CHANNEL_STORAGE_TABLE"] == name
    assert settings["CHANNEL_STORAGE_URL"] == "https://stx.table.core.windows.net/"


def test_telemetry_and_logs_accept_entra_id_only() -> None:
    (workspace,) = resources(MONITORING, "Microsoft.OperationalInsights/workspaces").values()
    assert config(workspace)["properties"]["features"]["disableLocalAuth"] is True
    (insights,) = resources(MONITORING, "Microsoft.Insights/components").values()
    assert config(insights)["properties"]["DisableLocalAuth"] is True


def test_outputs_name_the_app_its_url_health_and_identity() -> None:
    outputs = parse(MAIN)["outputs"]
    assert {"FUNCTION_APP_NAME", "FUNCTION_APP_URL", "HEALTH_URL", "AZURE_CLIENT_ID"} <= set(
        outputs
    )
    deployment = Deployment(azd_env("twilio"), AZURE_OUTPUTS)
    assert deployment.eval(MAIN, outputs["HEALTH_URL"]["value"]) == (
        "https://func-sms-x.azurewebsites.net/api/health"
    )
    assert deployment.eval(MAIN, outputs["AZURE_CLIENT_ID"]["value"]) == CLIENT_ID


# --- role assignments -----------------------------------------------------------------


def role_assignments() -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for path in bicep_files():
        for name, entry in resources(path, "Microsoft.Authorization/roleAssignments").items():
            yield path, name, entry


def test_each_role_is_assigned_once_on_its_resource_with_an_idempotent_name() -> None:
    seen: dict[str, tuple[Path, str]] = {}
    for path, name, entry in role_assignments():
        body = config(entry)
        definition = body["properties"]["roleDefinitionId"]["function"]
        assert definition["type"] == "subscription_resource_id", name
        assert (
            definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        )
        role = Deployment(azd_env("acs"), AZURE_OUTPUTS).eval(
            path, definition["parameters"]["resource_name_1"]
        )
        assert role in ROLES, f"{path.name}:{name} assigns an unexpected role {role}"
        assert role not in seen, f"{role} assigned twice"
        expected_file, scope_type = ROLES[role]
        assert path == expected_file, f"{role} belongs in {expected_file.name}"
        scope = body["scope"]
        assert resources(path)[scope]["type"] == scope_type
        # guid(scope, principal, role): reruns find the same assignment.
        guid = body["name"]["function"]
        assert guid["type"] == "guid"
        parts = list(guid["parameters"].values())
        assert parts[0] == {
            "operator": {
                "type": "property_accessor",
                "operands": {"operand_1": scope, "operand_2": "id"},
            }
        }
        assert parts[1] == "principalId" == body["properties"]["principalId"]
        assert parts[2] == definition["parameters"]["resource_name_1"]
        assert body["properties"]["principalType"] == "ServicePrincipal"
        # The principal is the app's identity.
        _, call = module_of(path)
        assert config(call)["params"]["principalId"] == {
            "operator": {
                "type": "property_accessor",
                "operands": {
                    "operand_1": "identity",
                    "operand_2": {
                        "operator": {
                            "type": "property_accessor",
                            "operands": {"operand_1": "outputs", "operand_2": "principalId"},
                        }
                    },
                },
            }
        }
        seen[role] = (path, name)
    assert set(seen) == set(ROLES)


def test_the_acs_send_role_is_granted_only_without_an_access_key() -> None:
    (sender,) = (e for p, _, e in role_assignments() if p == ACS)
    assert condition(sender) == "grantSendRole"
    _, call = module_of(ACS)
    deployment = Deployment(azd_env("acs"), AZURE_OUTPUTS)
    assert deployment.eval(MAIN, config(call)["params"]["grantSendRole"]) is True
    keyed = Deployment(azd_env("acs", ACS_ACCESS_KEY="a2V5"), AZURE_OUTPUTS)
    assert keyed.eval(MAIN, config(call)["params"]["grantSendRole"]) is False


# --- secrets --------------------------------------------------------------------------


def secure_parameters(path: Path) -> list[str]:
    params = parse(path).get("parameters", {})
    return [
        name
        for name, p in params.items()
        if any(d.get("type") == "secure" for d in p.get("decorators", []))
    ]


def allowed_secret_use(path: Path, where: tuple[str, ...], parsed: dict[str, Any]) -> bool:
    """Where a @secure() parameter may appear: only places that keep it secret."""
    if "empty" in where or where[-1:] == ("item_to_test",):
        return True  # empty(secret) reveals only whether it was given
    if where[:1] == ("resources",):
        resource = parsed["resources"][where[1]]
        if resource["type"] == "Microsoft.KeyVault/vaults/secrets":
            return where[-2:] == ("properties", "value")
        if resource["type"] == "Microsoft.EventGrid/eventSubscriptions":
            # Event Grid keeps a webhook's URL write-only: the secret is its `secret` query.
            return where[-1] == "endpointUrl"
        return False
    if where[:1] == ("modules",):
        module = parsed["modules"][where[1]]
        target = parse((path.parent / module["detail"]["path"]).resolve())
        param = where[-1]
        return where[-2] == "params" and any(
            d.get("type") == "secure" for d in target["parameters"][param]["decorators"]
        )
    return False


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_secure_parameters_flow_only_into_key_vault_and_secure_parameters(path: Path) -> None:
    parsed = parse(path)
    for secret in secure_parameters(path):
        uses = [
            where
            for where, node in walk({k: v for k, v in parsed.items() if k != "parameters"})
            if isinstance(node, str) and mentions(node, secret)
        ]
        assert uses or path == MAIN, f"{secret} is never used"
        for where in uses:
            assert where[0] != "outputs", f"{secret} reaches output {where[1]}"
            assert allowed_secret_use(path, where, parsed), f"{secret} reaches {'.'.join(where)}"


def test_every_secret_setting_is_a_key_vault_reference_to_its_own_secret() -> None:
    secrets = secret_names()
    assert {
        "TWILIO_AUTH_TOKEN",
        "ACS_ACCESS_KEY",
        "CHANNEL_WEBHOOK_SECRET",
        "VONAGE_PRIVATE_KEY",
        "VONAGE_SIGNATURE_SECRET",
        "TELNYX_API_KEY",
        "SINCH_API_TOKEN",
        "SINCH_WEBHOOK_SECRET",
        "PLIVO_AUTH_TOKEN",
    } <= secrets
    env = azd_env(
        "twilio",
        ACS_ACCESS_KEY="YWNzLWtleQ==",
        CHANNEL_WEBHOOK_SECRET="event-grid-shared-value",
        VONAGE_PRIVATE_KEY=AZD_ENV["vonage"]["VONAGE_PRIVATE_KEY"],
        VONAGE_SIGNATURE_SECRET="vonage-secret",
        TELNYX_API_KEY="telnyx-key",
        SINCH_API_TOKEN="sinch-token",
        SINCH_WEBHOOK_SECRET="sinch-signing-secret",
        PLIVO_AUTH_TOKEN="plivo-token",
    )
    written = app_settings(Deployment(env, AZURE_OUTPUTS))
    vault = Deployment(env, AZURE_OUTPUTS).eval(MAIN, "keyVaultName")
    _, call = module_of(KEYVAULT)
    assert Deployment(env, AZURE_OUTPUTS).eval(MAIN, config(call)["params"]["name"]) == vault
    for name in secrets & set(written):
        value = written[name]
        assert re.fullmatch(rf"@Microsoft\.KeyVault\(VaultName={vault};SecretName=[\w-]+\)", value)
        # The referenced secret holds the value the user gave under the setting's own name,
        # and that value is written nowhere else.
        assert resolve_reference(value, env) == env[name], name
        others = [v for k, v in written.items() if k != name]
        assert not any(env[name] in str(v) for v in others), name


def test_a_secret_not_given_is_not_referenced() -> None:
    written = app_settings(Deployment(azd_env("loopback"), AZURE_OUTPUTS))
    assert written["TWILIO_AUTH_TOKEN"] == ""
    assert written["CHANNEL_WEBHOOK_SECRET"] == ""
    for entry in resources(KEYVAULT, "Microsoft.KeyVault/vaults/secrets").values():
        assert condition(entry) is not None  # no empty secret is created


# --- the settings the template writes and the app reads --------------------------------


@pytest.mark.parametrize("provider", PROVIDER_IDS)
def test_the_deployed_settings_satisfy_config_in_azure(provider: str) -> None:
    settings = deployed(provider)
    assert not set(PLATFORM_PROVIDED) & set(settings)
    read = Settings.from_env({**settings, **PLATFORM_PROVIDED})
    assert read.problems == ()
    assert read.provider == provider
    assert read.in_azure
    assert read.ledger_kind == "table"
    assert read.public_url == "https://func-sms-x.azurewebsites.net"


def test_routes_reach_the_app_and_their_providers_settings_are_checked_there() -> None:
    definition = "b1b25a46-6da0-4c08-9cf3-505e613c8e30"
    routes = json.dumps({definition: "vonage", "+12065550100": "telnyx"})
    env = {**AZD_ENV["vonage"], **AZD_ENV["telnyx"], "CHANNEL_ROUTES": routes}
    del env["CHANNEL_PROVIDER"]
    settings = deployed("twilio", **env)
    assert settings["CHANNEL_ROUTES"] == routes
    read = Settings.from_env({**settings, **PLATFORM_PROVIDED})
    assert read.problems == ()
    assert read.providers_in_use == ("twilio", "vonage", "telnyx")
    assert read.routes.provider_for(definition, "12065550100") == "vonage"
    # Without a routed provider's own settings, the deployed app says so.
    partial = deployed(
        "twilio", CHANNEL_ROUTES=routes, **AZD_ENV["telnyx"] | {"CHANNEL_PROVIDER": "twilio"}
    )
    problems = Settings.from_env({**partial, **PLATFORM_PROVIDED}).problems
    assert "VONAGE_APPLICATION_ID is not set (provider vonage)" in problems


def test_no_routes_unless_set() -> None:
    assert deployed("twilio")["CHANNEL_ROUTES"] == ""
    assert Settings.from_env({**deployed("twilio"), **PLATFORM_PROVIDED}).routes.entries == ()


def test_the_sample_settings_list_every_setting_the_app_reads() -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert names_config_reads() - set(PLATFORM_PROVIDED) - set(sample) == set()


def test_the_template_writes_the_settings_config_reads() -> None:
    written = set(deployed("twilio"))
    app_written = {name for name in written if not HOST_SETTINGS.fullmatch(name)}
    read = names_config_reads()
    assert app_written - read == set(), "the template writes settings the app never reads"
    assert read - app_written == set(NOT_WRITTEN), (
        "every setting the app reads is written by the template or listed in NOT_WRITTEN"
    )


def test_each_setting_is_set_with_azd_env_under_its_own_name() -> None:
    channel = parse(MAIN)["variables"]["channelSettings"]["value"]
    for setting, value in channel.items():
        params = [p for p in parse(MAIN)["parameters"] if mentions(value, p)]
        if params:
            (param,) = params
            assert azd_name(param)[0] == setting


def test_azure_yaml_deploys_this_folder_as_a_python_function_with_the_hook() -> None:
    text = (ROOT / "azure.yaml").read_text()
    api = re.search(r"\n  api:\n((?:    .*\n)+)", text)
    assert api is not None
    assert re.findall(r"^    (\w+): (\S+)$", api.group(1), re.MULTILINE) == [
        ("project", "."),
        ("language", "python"),
        ("host", "function"),
    ]
    runs = re.findall(r"run: (\S+) (\S+)", text)
    assert runs == [
        ("python3", "infra/hooks/prepackage.py"),
        ("python", "infra/hooks/prepackage.py"),
        ("python3", "infra/hooks/postdeploy.py"),
        ("python", "infra/hooks/postdeploy.py"),
    ]
    # Project-level hooks, each for posix (sh) and windows (pwsh).
    hooks = re.findall(
        r"^  (\w+):\n    posix:\n      shell: sh\n.*?\n    windows:\n      shell: pwsh\n",
        text,
        re.M | re.S,
    )
    assert hooks == ["prepackage", "postdeploy"]
    assert (ROOT / "infra" / "hooks" / "prepackage.py").is_file()
    assert (ROOT / "infra" / "hooks" / "postdeploy.py").is_file()


def test_funcignore_keeps_infra_and_tooling_out_of_the_package() -> None:
    patterns = (ROOT / ".funcignore").read_text().split()
    for path in (
        "infra",
        ".github",
        ".vscode",
        "azure.yaml",
        ".azure",
        "tests",
        ".venv-checkov",
        "tools",  # the local host and the provisioning command
        "requirements-devhost.txt",
        "bench",
    ):
        assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns), path
    # channel/__pycache__ carries the byte-code infra/hooks/prepackage.py ships.
    kept = ("channel", "host.json", "__pycache__", "function_app.cpython-312.pyc")
    assert not any(fnmatch.fnmatch(name, p) for name in kept for p in patterns)


# --- CI, deploy workflow and editor -----------------------------------------------------


def test_ci_runs_make_test_on_the_oldest_and_newest_python() -> None:
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert re.search(r'python-version: \["3\.11", "3\.13"\]', text)
    assert re.search(r"^\s+run: make test\b", text, re.MULTILINE)
    assert "node-version: 20" in text
    assert "apt-get install -y mono-mcs" in text


def test_the_deploy_workflow_signs_in_with_federated_credentials_only() -> None:
    text = (ROOT / ".github" / "workflows" / "azure-dev.yml").read_text()
    assert re.search(r"^  id-token: write$", text, re.MULTILINE)
    assert "--federated-credential-provider github" in text
    assert "AZURE_CLIENT_SECRET" not in text
    # Every secure parameter reaches azd from a GitHub secret, never a variable.
    for param in secure_parameters(MAIN):
        name = azd_name(param)[0]
        assert f"{name}: ${{{{ secrets.{name} }}}}" in text, name
        assert re.search(rf"^    - {name}$", (ROOT / "azure.yaml").read_text(), re.MULTILINE)


def test_vscode_starts_core_tools_before_attaching_the_debugger() -> None:
    folder = ROOT / ".vscode"
    launch = json.loads((folder / "launch.json").read_text())
    tasks = {t["label"]: t for t in json.loads((folder / "tasks.json").read_text())["tasks"]}
    configurations = {c["request"]: c for c in launch["configurations"]}
    start = tasks[configurations["attach"]["preLaunchTask"]]
    assert (start["type"], start["command"]) == ("func", "host start")
    assert start["dependsOn"] in tasks
    # Without Core Tools: the local host under the debugger, its requirements installed first.
    local = configurations["launch"]
    assert local["module"] == "tools.devhost"
    assert "requirements-devhost.txt" in tasks[local["preLaunchTask"]]["linux"]["command"]
    assert (ROOT / "tools" / "devhost" / "__main__.py").is_file()
    recommended = json.loads((folder / "extensions.json").read_text())["recommendations"]
    assert "ms-azuretools.vscode-azurefunctions" in recommended
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["azureFunctions.projectLanguageModel"] == 2
