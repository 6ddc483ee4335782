"""The operator's workbook and alert rules (infra/): they parse, are deployed by the
template, and query only the metrics and attributes the app declares and records."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from channel import telemetry
from tests.bicep import (
    INFRA,
    MAIN,
    ROOT,
    azd_name,
    condition,
    config,
    mentions,
    module_of,
    parse,
    resources,
)

OBSERVABILITY = INFRA / "app" / "observability.bicep"
MONITORING = INFRA / "app" / "monitoring.bicep"
WORKBOOK = INFRA / "workbook.json"
ALERTS = INFRA / "alerts.json"

_NAME = re.compile(r'"((?:sms|dataverse|http|error)\.[a-z0-9_.]+)"')
"""A quoted dotted name in a query: a metric or an attribute of the app's."""
_DIMENSION = re.compile(r'customDimensions\["([^"]+)"\]')


def workbook() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    return data


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = json.loads(ALERTS.read_text(encoding="utf-8"))["rules"]
    return rules


def workbook_queries() -> dict[str, str]:
    """The KQL of each query item of the workbook, by item name."""
    return {
        item["name"]: item["content"]["query"] for item in workbook()["items"] if item["type"] == 3
    }


def all_queries() -> dict[str, str]:
    """Every query: the workbook's and the alert rules'."""
    rules = {f"alert {rule['name']}": rule["query"] for rule in alert_rules()}
    return workbook_queries() | rules


def metrics_of(query: str) -> set[str]:
    """The app's metrics a query names."""
    return {name for name in _NAME.findall(query) if name in telemetry.METRICS}


def test_the_workbook_is_a_notebook_of_app_insights_queries() -> None:
    book = workbook()
    assert book["version"] == "Notebook/1.0"
    queries = [item["content"] for item in book["items"] if item["type"] == 3]
    assert len(queries) >= 8
    for content in queries:
        assert content["version"] == "KqlItem/1.0"
        # Log queries (queryType 0) on the Application Insights resource the template names.
        assert (content["queryType"], content["resourceType"]) == (
            0,
            "microsoft.insights/components",
        )
        assert content["timeContextFromParameter"] == "TimeRange"
    (parameters,) = [item["content"] for item in book["items"] if item["type"] == 9]
    assert {p["name"] for p in parameters["parameters"]} == {"TimeRange", "RequestId"}
    names = [item["name"] for item in book["items"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", sorted(all_queries()))
def test_each_query_names_only_what_the_app_declares(name: str) -> None:
    query = all_queries()[name]
    named = set(_NAME.findall(query))
    assert named, "a query of the app's telemetry names at least one metric or attribute"
    assert named <= set(telemetry.METRICS) | telemetry.ATTRIBUTES
    dimensions = set(_DIMENSION.findall(query))
    metrics = metrics_of(query)
    if "customMetrics" in query:
        # A metric's points carry only the attributes declared for it.
        assert metrics, "a customMetrics query selects the app's metrics by name"
        carried = {key for metric in metrics for key in telemetry.METRICS[metric]}
        assert dimensions <= carried
    else:
        assert dimensions <= telemetry.ATTRIBUTES


def test_the_workbook_shows_every_metric_the_app_records() -> None:
    shown = {metric for query in workbook_queries().values() for metric in metrics_of(query)}
    assert shown == set(telemetry.METRICS)


def test_the_operators_views_are_there() -> None:
    queries = workbook_queries()
    # Sent, refused, delivered and not delivered per hour, per provider and definition.
    messages = queries["messages-by-provider"]
    assert metrics_of(messages) == {"sms.outbound.messages", "sms.delivery_reports"}
    assert "bin(timestamp, 1h), provider, channelDefinition" in messages
    assert metrics_of(queries["provider-latency"]) == {"sms.provider.duration"}
    assert metrics_of(queries["dataverse-latency"]) == {"sms.dataverse.duration"}
    assert metrics_of(queries["refusals"]) == {"sms.webhook.refusals"}
    assert '"sms.webhook.refusal"' in queries["refusals"]
    assert metrics_of(queries["outbox"]) == {"sms.outbox.pending", "sms.outbox.dead"}
    # One request end to end: the RequestId parameter against the spans' and logs'.
    one = queries["one-request"]
    assert 'let rid = "{RequestId}";' in one
    assert 'tostring(customDimensions["sms.request_id"]) == rid' in one
    assert telemetry.REQUEST_ID in telemetry.LOG_KEYS  # the log records carry it too


def test_the_alert_rules_cover_dead_items_rates_and_refusals() -> None:
    rules = {rule["name"]: rule for rule in alert_rules()}
    assert {name: metrics_of(rule["query"]) for name, rule in rules.items()} == {
        "outbox-dead": {"sms.outbox.dead"},
        "not-sent-rate": {"sms.outbound.messages"},
        "provider-5xx-rate": {"sms.provider.duration"},
        "webhook-refusals": {"sms.webhook.refusals"},
    }
    for rule in rules.values():
        assert "{threshold}" in rule["query"], rule["name"]
        assert rule["severity"] in range(5)
    # Each rule has its threshold parameter in the module, under the rule's name.
    thresholds = parse(OBSERVABILITY)["variables"]["thresholds"]["value"]
    assert {key.strip("'") for key in thresholds} == set(rules)
    for parameter in thresholds.values():
        assert parse(OBSERVABILITY)["parameters"][parameter]["type"] == "int"


def test_the_template_deploys_the_workbook_and_the_rules_from_these_files() -> None:
    name, module = module_of(OBSERVABILITY)
    assert name == "observability"
    params = config(module)["params"]
    assert mentions(params["applicationInsightsId"], "monitoring")
    assert "applicationInsightsId" in parse(MONITORING)["outputs"]
    (book,) = resources(OBSERVABILITY, "Microsoft.Insights/workbooks").values()
    properties = config(book)["properties"]
    loaded = properties["serializedData"]["function"]
    assert (loaded["type"], loaded["parameters"]["file_path"]) == (
        "load_text_content",
        "../workbook.json",
    )
    assert (OBSERVABILITY.parent / loaded["parameters"]["file_path"]).resolve() == WORKBOOK
    assert properties["sourceId"] == "applicationInsightsId"
    rules = parse(OBSERVABILITY)["variables"]["rules"]["value"]
    assert mentions(rules, "../alerts.json")
    (alerts,) = resources(OBSERVABILITY, "Microsoft.Insights/scheduledQueryRules").values()
    assert alerts["config"]["loop_type"]["detail"] == {"item_name": "rule", "array_name": "rules"}
    assert config(alerts)["properties"]["scopes"] == ["applicationInsightsId"]


def test_alert_mail_is_optional_and_set_with_azd() -> None:
    assert azd_name("alertEmail") == ("ALERT_EMAIL", None)
    assert parse(MAIN)["parameters"]["alertEmail"]["default"] == ""
    assert mentions(config(module_of(OBSERVABILITY)[1])["params"]["alertEmail"], "alertEmail")
    (group,) = resources(OBSERVABILITY, "Microsoft.Insights/actionGroups").values()
    assert mentions(condition(group), "alertEmail")  # no action group without an address
    # The deploy workflow passes it on, as a variable (an address is not a secret).
    workflow = (ROOT / ".github" / "workflows" / "azure-dev.yml").read_text(encoding="utf-8")
    assert "      ALERT_EMAIL: ${{ vars.ALERT_EMAIL }}\n" in workflow
    assert "\n    - ALERT_EMAIL\n" in (ROOT / "azure.yaml").read_text(encoding="utf-8")
