"""Process-wide parts: built once, on first use, and the session's environment cache."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from channel.errors import NotConfigured
from channel.runtime import get_runtime
from tests.conftest import Configure
from tests.data import DEFINITION_ID, TELNYX_API_KEY
from tests.fake_telnyx import PUBLIC_KEY


def test_parts_are_built_once_even_under_concurrent_first_use(configure: Configure) -> None:
    runtime = get_runtime()
    seen: list[tuple[object, ...]] = []
    gate = threading.Barrier(8)

    def first_use() -> None:
        gate.wait()
        seen.append((runtime.session, runtime.ledger, runtime.provider, runtime.outbound))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({tuple(id(part) for part in parts) for parts in seen}) == 1
    assert get_runtime() is runtime


def test_each_routed_providers_adapter_is_built_once_and_only_when_configured(
    configure: Configure,
) -> None:
    configure(
        CHANNEL_PROVIDER="loopback",
        CHANNEL_ROUTES=json.dumps({DEFINITION_ID: "telnyx"}),
        TELNYX_API_KEY=TELNYX_API_KEY,
        TELNYX_PUBLIC_KEY=PUBLIC_KEY,
    )
    runtime = get_runtime()
    seen: list[object] = []
    gate = threading.Barrier(8)

    def first_use() -> None:
        gate.wait()
        seen.append(runtime.provider_for("telnyx"))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(adapter) for adapter in seen}) == 1
    assert runtime.provider_for("telnyx").id == "telnyx"
    assert runtime.provider.id == "loopback"
    # A provider no route names may still be needed (a request first sent through it):
    # built only if its own settings are complete.
    with pytest.raises(NotConfigured) as refused:
        runtime.provider_for("vonage")
    assert "VONAGE_APPLICATION_ID is not set (provider vonage)" in refused.value.problems


def test_session_reads_proxy_settings_once_per_host(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    original = requests.utils.get_environ_proxies

    def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
        reads.append(url)
        return original(url, no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.contoso.example:3128")
    session = get_runtime().session
    merged = [
        session.merge_environment_settings(f"https://api.twilio.com/{n}", {}, None, None, None)
        for n in range(3)
    ]
    assert len(reads) == 1
    assert merged[0]["proxies"]["https"] == "http://proxy.contoso.example:3128"
    assert merged[0] == merged[2]
    merged[0]["proxies"]["https"] = "changed"  # callers get copies
    assert (
        session.merge_environment_settings("https://api.twilio.com/x", {}, None, None, None)[
            "proxies"
        ]["https"]
        == "http://proxy.contoso.example:3128"
    )
    explicit = {"https": "http://other.example:1"}
    assert (
        session.merge_environment_settings("https://api.twilio.com/x", explicit, None, None, None)[
            "proxies"
        ]["https"]
        == "http://other.example:1"
    )
