"""Settings: read once from the environment, every problem listed in plain words."""

from __future__ import annotations

import pytest

from channel.config import Settings
from channel.providers import twilio
from tests.data import TWILIO_SID, TWILIO_TOKEN


def test_zero_configuration_runs_loopback_with_embedded_ledger_and_logged_dataverse() -> None:
    settings = Settings.from_env({})
    assert settings.provider == "loopback"
    assert settings.ledger_kind == "embedded"
    assert settings.dataverse_dev_mode
    assert settings.message_part == "text"
    assert settings.default_region == "US"
    assert settings.budget_seconds == 20.0
    assert settings.problems == ()


def test_in_azure_provider_ledger_and_dataverse_must_be_explicit() -> None:
    settings = Settings.from_env({"WEBSITE_INSTANCE_ID": "abc"})
    problems = " | ".join(settings.problems)
    assert "CHANNEL_PROVIDER is not set" in problems
    assert "embedded store" in problems
    assert "DATAVERSE_URL is not set" in problems
    assert not settings.dataverse_dev_mode


def test_every_problem_is_listed_not_just_the_first() -> None:
    settings = Settings.from_env(
        {
            "CHANNEL_PROVIDER": "twilio",
            "CHANNEL_PUBLIC_URL": "contoso.example",
            "CHANNEL_DEFINITION_ID": "nope",
            "CHANNEL_TIME_BUDGET_SECONDS": "soon",
            "CHANNEL_DEFAULT_REGION": "USA",
        }
    )
    problems = settings.problems
    assert any(p.startswith("TWILIO_ACCOUNT_SID is not set") for p in problems)
    assert any(p.startswith("TWILIO_AUTH_TOKEN is not set") for p in problems)
    assert any(p.startswith("CHANNEL_PUBLIC_URL must be an absolute") for p in problems)
    assert any(p.startswith("CHANNEL_DEFINITION_ID must be a GUID") for p in problems)
    assert any(p.startswith("CHANNEL_TIME_BUDGET_SECONDS must be") for p in problems)
    assert any(p.startswith("CHANNEL_DEFAULT_REGION must be") for p in problems)
    assert len(problems) == 6


def test_unknown_provider_is_a_problem() -> None:
    settings = Settings.from_env({"CHANNEL_PROVIDER": "carrier-pigeon"})
    assert settings.problems == (
        "CHANNEL_PROVIDER is not a known provider "
        "(loopback, twilio, acs, vonage, telnyx, sinch, plivo)",
    )


def test_twilio_settings_are_checked_for_shape() -> None:
    settings = Settings.from_env(
        {
            "CHANNEL_PROVIDER": "Twilio",
            "TWILIO_ACCOUNT_SID": "SK123",
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_MESSAGING_SERVICE_SID": "MG1",
        }
    )
    assert settings.provider == "twilio"
    assert len(settings.problems) == 2
    good = Settings.from_env(
        {"CHANNEL_PROVIDER": "twilio", "TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": "t"}
    )
    assert good.problems == ()
    assert twilio.SPEC.settings_in(good).base_url == "https://api.twilio.com"


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings.from_env(
        {"TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "CHANNEL_WEBHOOK_SECRET": "s3cr3t-value"}
    )
    assert TWILIO_TOKEN not in repr(settings)
    assert "s3cr3t-value" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"CHANNEL_PUBLIC_URL": "https://sms.contoso.example/"}, "https://sms.contoso.example"),
        (
            {"WEBSITE_HOSTNAME": "contoso-sms.azurewebsites.net"},
            "https://contoso-sms.azurewebsites.net",
        ),
    ],
)
def test_status_callback_url_comes_from_the_public_url(
    env: dict[str, str], expected: str | None
) -> None:
    url = Settings.from_env(env).status_callback_url("twilio")
    assert url == (None if expected is None else f"{expected}/api/delivery-report/twilio")


def test_blank_values_count_as_unset() -> None:
    settings = Settings.from_env({"CHANNEL_PROVIDER": "  ", "DATAVERSE_URL": ""})
    assert settings.provider == "loopback"
    assert settings.dataverse_url is None
    assert settings.problems == ()


def test_acs_settings_are_checked() -> None:
    settings = Settings.from_env(
        {
            "CHANNEL_PROVIDER": "acs",
            "ACS_ENDPOINT": "https://x.communication.azure.com",
            "ACS_ACCESS_KEY": "not base64!",
        }
    )
    assert settings.problems == (
        "ACS_ACCESS_KEY is not base64: copy a Key of the resource (Keys blade), "
        "not its connection string",
    )
    assert any(note.startswith("CHANNEL_WEBHOOK_SECRET not set") for note in settings.notes)
    assert Settings.from_env({"CHANNEL_PROVIDER": "acs"}).problems == (
        "ACS_ENDPOINT is not set (provider acs)",
    )


@pytest.mark.parametrize("region", ["UK", "XX", "EU"])
def test_a_region_without_phone_numbers_is_a_problem(region: str) -> None:
    # UK is two letters but not an ISO region (GB is): every national number would fail.
    settings = Settings.from_env({"CHANNEL_DEFAULT_REGION": region})
    assert settings.problems == (
        "CHANNEL_DEFAULT_REGION must be an ISO 3166-1 region that has phone numbers "
        "(e.g. US, GB, DE)",
    )


def test_regions_are_read_in_any_case() -> None:
    assert Settings.from_env({"CHANNEL_DEFAULT_REGION": "gb"}).default_region == "GB"


@pytest.mark.parametrize(
    "name", ["ACS_ENDPOINT", "DATAVERSE_URL", "CHANNEL_PUBLIC_URL", "CHANNEL_STORAGE_URL"]
)
def test_problems_name_the_setting_and_never_quote_its_value(name: str) -> None:
    value = "endpoint=https://x.example/;accesskey=S3cretValueForTests=="
    settings = Settings.from_env({"CHANNEL_PROVIDER": "acs", name: value})
    joined = " | ".join(settings.problems + settings.notes)
    assert f"{name} looks like a connection string" in joined
    assert "S3cretValueForTests" not in joined
    assert "accesskey" not in joined.lower()


def test_a_malformed_value_is_named_not_quoted() -> None:
    settings = Settings.from_env(
        {"CHANNEL_PROVIDER": "carrier-pigeon-42", "CHANNEL_DEFINITION_ID": "guid-ish-42"}
    )
    joined = " | ".join(settings.problems)
    assert "CHANNEL_PROVIDER is not a known provider" in joined
    assert "CHANNEL_DEFINITION_ID must be a GUID" in joined
    assert "42" not in joined


def test_max_segments_is_optional_and_read_as_a_whole_number() -> None:
    assert Settings.from_env({}).max_segments is None
    assert Settings.from_env({"CHANNEL_MAX_SEGMENTS": " 3 "}).max_segments == 3
    assert Settings.from_env({"CHANNEL_MAX_SEGMENTS": "50"}).max_segments == 50


@pytest.mark.parametrize("value", ["0", "51", "2.5", "-1", "three", "\u0661"])
def test_max_segments_out_of_1_to_50_is_a_problem(value: str) -> None:
    settings = Settings.from_env({"CHANNEL_MAX_SEGMENTS": value})
    assert settings.max_segments is None
    assert settings.problems == ("CHANNEL_MAX_SEGMENTS must be a whole number from 1 to 50",)
