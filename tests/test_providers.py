"""The provider registry: one line and one ProviderSpec per provider, imported when used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from channel.config import Settings, SettingsReader
from channel.errors import NotFound, NotImplementedYet
from channel.providers import PROVIDER_IDS, build_webhooks, spec
from channel.providers.base import ProviderSpec

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("provider_id", PROVIDER_IDS)
def test_each_registry_line_leads_to_the_spec_of_that_provider(provider_id: str) -> None:
    described = spec(provider_id)
    assert isinstance(described, ProviderSpec)
    assert described.id == provider_id
    environ = {"CHANNEL_PROVIDER": "loopback", "TWILIO_AUTH_TOKEN": "t", "ACS_ACCESS_KEY": "k"}
    # Every provider has settings, whichever provider sends (read when first asked for).
    own = described.read_settings(SettingsReader(environ)).values
    assert described.settings_in(Settings.from_env(environ)) == own


def test_an_unknown_provider_is_not_found_and_named() -> None:
    with pytest.raises(NotFound, match="no provider 'pigeon' \\(known: loopback, twilio"):
        spec("pigeon")


def test_a_provider_without_webhooks_says_so() -> None:
    with pytest.raises(NotImplementedYet, match="provider 'loopback' has no webhooks"):
        build_webhooks("loopback", Settings.from_env({}))


def test_importing_the_app_imports_no_provider_module(tmp_path: Path) -> None:
    """Cold start: a provider's module is imported when the settings are read, not before."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import function_app;"
        "print(' '.join(m for m in sorted(sys.modules) if m.startswith('channel.providers.')))"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script, str(ROOT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["channel.providers.base"]
