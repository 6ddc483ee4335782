"""CHANNEL_ROUTES: parsing, precedence, problems, the providers in use, health."""

from __future__ import annotations

import json

import pytest

from channel.config import Settings
from channel.providers import PROVIDER_IDS
from channel.routing import Routes, parse_routes
from tests.conftest import Call, Configure, answer_json
from tests.data import (
    DEFINITION_ID,
    EU_SENDER,
    OTHER_DEFINITION_ID,
    SENDER,
    SENDER_E164,
    TELNYX_API_KEY,
    TWILIO_SID,
    TWILIO_TOKEN,
    VONAGE_APPLICATION_ID,
    VONAGE_SIGNATURE_SECRET,
)
from tests.fake_telnyx import PUBLIC_KEY
from tests.fake_vonage import PRIVATE_KEY_PEM

OTHER_DEFINITION = OTHER_DEFINITION_ID
THIRD_DEFINITION = "7d1e9a2b-3c4f-4a5b-8c6d-9e0f1a2b3c4d"

VONAGE = {
    "VONAGE_APPLICATION_ID": VONAGE_APPLICATION_ID,
    "VONAGE_PRIVATE_KEY": PRIVATE_KEY_PEM,
    "VONAGE_SIGNATURE_SECRET": VONAGE_SIGNATURE_SECRET,
}
TELNYX = {"TELNYX_API_KEY": TELNYX_API_KEY, "TELNYX_PUBLIC_KEY": PUBLIC_KEY}
TWILIO = {"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}


def parse(table: object, default: str = "twilio") -> tuple[Routes, list[str]]:
    raw = table if isinstance(table, str) else json.dumps(table)
    return parse_routes(raw, default=default, known=PROVIDER_IDS, region="US")


def settings(**environ: str) -> Settings:
    return Settings.from_env(environ)


# --- parsing and precedence ------------------------------------------------------------------


def test_guid_keys_route_definitions_and_other_keys_route_senders() -> None:
    routes, problems = parse(
        {DEFINITION_ID.upper(): "Vonage", SENDER: "telnyx", "Contoso": " acs "}
    )
    assert problems == []
    assert routes.by_definition == {DEFINITION_ID: "vonage"}
    # Senders as providers get them: numbers in E.164, alphanumeric ids as written.
    assert routes.by_sender == {SENDER_E164: "telnyx", "Contoso": "acs"}
    assert routes.in_use == ("twilio", "vonage", "telnyx", "acs")


def test_no_routes_send_everything_through_channel_provider() -> None:
    routes, problems = parse_routes(None, default="telnyx", known=PROVIDER_IDS, region="US")
    assert problems == []
    assert routes.entries == ()
    assert routes.provider_for(DEFINITION_ID, SENDER) == "telnyx"
    assert settings(CHANNEL_PROVIDER="telnyx", **TELNYX).providers_in_use == ("telnyx",)


def test_a_definition_route_wins_over_a_sender_route_which_wins_over_the_default() -> None:
    routes, _ = parse({DEFINITION_ID: "vonage", SENDER_E164: "telnyx"})
    assert routes.provider_for(DEFINITION_ID, SENDER) == "vonage"
    assert routes.provider_for(DEFINITION_ID.upper(), EU_SENDER) == "vonage"
    assert routes.provider_for(OTHER_DEFINITION, SENDER) == "telnyx"
    # Dataverse may write our number in any form the region reads.
    assert routes.provider_for(OTHER_DEFINITION, "+1 (206) 555-0100") == "telnyx"
    assert routes.provider_for(OTHER_DEFINITION, EU_SENDER) == "twilio"


def test_sender_routes_read_national_numbers_in_the_default_region() -> None:
    routes, problems = parse_routes(
        json.dumps({"07911 123457": "vonage"}), default="twilio", known=PROVIDER_IDS, region="GB"
    )
    assert problems == []
    assert routes.provider_for(DEFINITION_ID, EU_SENDER) == "vonage"


# --- problems -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ['{"a": "twilio"', "not json", '{"a": ' * 100_000])
def test_malformed_json_is_a_problem(raw: str) -> None:
    routes, problems = parse(raw)
    assert problems == ["CHANNEL_ROUTES is not valid JSON (a JSON object of route: provider id)"]
    assert routes.entries == ()


@pytest.mark.parametrize("raw", ['["twilio"]', '"twilio"', "42", "null"])
def test_json_that_is_not_an_object_is_a_problem(raw: str) -> None:
    routes, problems = parse(raw)
    assert problems == ["CHANNEL_ROUTES must be a JSON object mapping routes to provider ids"]
    assert routes.entries == ()


def test_unknown_provider_ids_are_one_problem_that_quotes_no_route() -> None:
    routes, problems = parse(
        {DEFINITION_ID: "nexmo", SENDER: 7, OTHER_DEFINITION: "vonage", "  ": "acs"}
    )
    assert problems == [
        "CHANNEL_ROUTES has an empty route",
        "CHANNEL_ROUTES names an unknown provider for 2 route(s) "
        f"(known: {', '.join(PROVIDER_IDS)})",
    ]
    assert not any(DEFINITION_ID in p or SENDER in p or "nexmo" in p for p in problems)
    # Kept, so that health can show them as not configured; never in use.
    assert routes.by_definition == {DEFINITION_ID: "nexmo", OTHER_DEFINITION: "vonage"}
    assert settings(CHANNEL_ROUTES=json.dumps({DEFINITION_ID: "nexmo"})).providers_in_use == (
        "loopback",
    )


def test_a_routed_providers_settings_are_checked_as_channel_providers_are() -> None:
    routes = json.dumps({DEFINITION_ID: "vonage"})
    missing = settings(CHANNEL_ROUTES=routes)
    assert missing.providers_in_use == ("loopback", "vonage")
    assert "VONAGE_APPLICATION_ID is not set (provider vonage)" in missing.problems
    assert missing.problems == settings(CHANNEL_PROVIDER="vonage").problems
    assert not missing.provider_configured("vonage")
    assert missing.provider_configured("loopback")

    complete = settings(CHANNEL_ROUTES=routes, **VONAGE)
    assert complete.problems == ()
    assert complete.provider_configured("vonage")


def test_a_provider_named_twice_reports_its_problems_once() -> None:
    routes = json.dumps({DEFINITION_ID: "telnyx", SENDER: "telnyx"})
    read = settings(CHANNEL_PROVIDER="telnyx", CHANNEL_ROUTES=routes)
    assert read.providers_in_use == ("telnyx",)
    assert read.problems == settings(CHANNEL_PROVIDER="telnyx").problems
    assert len(read.problems) == len(set(read.problems))


def test_each_provider_keeps_its_own_grace_unless_the_operator_sets_one() -> None:
    routes = json.dumps({DEFINITION_ID: "telnyx"})
    read = settings(CHANNEL_PROVIDER="twilio", CHANNEL_ROUTES=routes, **TWILIO, **TELNYX)
    assert read.ambiguous_grace_for("twilio") == 600
    assert read.ambiguous_grace_for("telnyx") == 60
    explicit = settings(
        CHANNEL_PROVIDER="twilio",
        CHANNEL_ROUTES=routes,
        CHANNEL_AMBIGUOUS_GRACE_SECONDS="30",
        **TWILIO,
        **TELNYX,
    )
    assert explicit.ambiguous_grace_for("twilio") == 30
    assert explicit.ambiguous_grace_for("telnyx") == 30


# --- where a reply belongs --------------------------------------------------------------------


def test_a_reply_takes_the_one_definition_routed_to_its_provider() -> None:
    routes, _ = parse({DEFINITION_ID: "vonage", OTHER_DEFINITION: "telnyx"})
    assert routes.reply_definition("vonage", THIRD_DEFINITION) == DEFINITION_ID
    assert routes.reply_definition("telnyx", THIRD_DEFINITION) == OTHER_DEFINITION
    # A provider no definition is routed to: CHANNEL_DEFINITION_ID, as without routes.
    assert routes.reply_definition("twilio", THIRD_DEFINITION) == THIRD_DEFINITION
    assert routes.reply_definition("twilio", None) is None


def test_a_reply_through_a_provider_of_several_definitions_waits_unless_the_default_is_one() -> (
    None
):
    routes, _ = parse({DEFINITION_ID: "vonage", OTHER_DEFINITION: "vonage"})
    assert routes.reply_definition("vonage", THIRD_DEFINITION) is None
    assert routes.reply_definition("vonage", OTHER_DEFINITION.upper()) == OTHER_DEFINITION.upper()


# --- health ---------------------------------------------------------------------------------


def test_health_lists_each_route_and_whether_its_provider_is_configured(
    call: Call, configure: Configure
) -> None:
    configure(
        CHANNEL_PROVIDER="telnyx",
        CHANNEL_ROUTES=json.dumps(
            {DEFINITION_ID: "vonage", OTHER_DEFINITION: "nexmo", EU_SENDER: "telnyx"}
        ),
        **TELNYX,
    )
    response = call("health", method="GET")
    assert response.status_code == 503
    report = answer_json(response)
    assert report["provider"] == "telnyx"
    assert report["providers"] == {"telnyx": True, "vonage": False}
    assert report["routes"] == [
        {"channelDefinitionId": DEFINITION_ID, "provider": "vonage", "configured": False},
        {"channelDefinitionId": OTHER_DEFINITION, "provider": "nexmo", "configured": False},
        # Health is public: our numbers are masked as in logs.
        {"sender": "+4*******3457", "provider": "telnyx", "configured": True},
    ]
    assert "VONAGE_APPLICATION_ID is not set (provider vonage)" in report["problems"]
    assert any(p.startswith("CHANNEL_ROUTES names an unknown provider") for p in report["problems"])
    assert EU_SENDER not in response.get_body().decode()


def test_health_is_ok_when_every_routed_provider_is_configured(
    call: Call, configure: Configure
) -> None:
    configure(
        CHANNEL_PROVIDER="telnyx",
        CHANNEL_ROUTES=json.dumps({DEFINITION_ID: "vonage"}),
        **TELNYX,
        **VONAGE,
    )
    response = call("health", method="GET")
    assert response.status_code == 200, response.get_body()
    report = answer_json(response)
    assert report["providers"] == {"telnyx": True, "vonage": True}
    assert report["routes"] == [
        {"channelDefinitionId": DEFINITION_ID, "provider": "vonage", "configured": True}
    ]


def test_health_without_routes_lists_channel_provider_alone(call: Call) -> None:
    report = answer_json(call("health", method="GET"))
    assert report["providers"] == {"loopback": True}
    assert report["routes"] == []
