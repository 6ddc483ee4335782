"""Number normalisation (E.164 for providers) and masking (for logs)."""

from __future__ import annotations

import pytest

from channel import phone
from channel.phone import mask, sender_for_provider, to_e164
from tests.data import (
    INVALID_RECIPIENT,
    RECIPIENT,
    RECIPIENT_NATIONAL,
    RECIPIENT_NATIONAL_E164,
    SENDER,
    SENDER_E164,
    UK_RECIPIENT,
    UK_RECIPIENT_E164,
)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        (SENDER, "US", SENDER_E164),  # Dataverse's digits-only international form
        (RECIPIENT, "US", RECIPIENT),
        (RECIPIENT_NATIONAL, "US", RECIPIENT_NATIONAL_E164),
        (UK_RECIPIENT, "US", UK_RECIPIENT_E164),
        ("07911 123456", "GB", UK_RECIPIENT_E164),
        (" +44 7911 123456 ", "US", UK_RECIPIENT_E164),
        (INVALID_RECIPIENT, "US", None),
        ("call me", "US", None),
        ("", "US", None),
    ],
)
def test_to_e164(raw: str, region: str, expected: str | None) -> None:
    assert to_e164(raw, region) == expected


def test_digits_read_in_the_default_region_when_not_international() -> None:
    # 10 digits are not a valid number with a leading '+', but are a US national number.
    assert to_e164(RECIPIENT_NATIONAL_E164[2:], "US") == RECIPIENT_NATIONAL_E164


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(SENDER, SENDER_E164), ("Contoso", "Contoso"), ("89898", "89898")],
)
def test_sender_ids_and_short_codes_pass_unchanged(raw: str, expected: str) -> None:
    assert sender_for_provider(raw, "US") == expected


def test_mask_keeps_only_the_ends() -> None:
    assert mask(RECIPIENT) == "+1******0199"
    assert mask("12345") == "*****"
    assert mask(None) == "-"


def test_long_input_is_no_number_and_is_not_cached() -> None:
    """The caches key on the raw input: input longer than any number never enters them."""
    numbers, senders = phone._to_e164.cache_info(), phone._sender_for_provider.cache_info()
    long = "1" * 10_000
    assert to_e164(long, "US") is None
    assert to_e164(" " * 60 + "+1" + "4" * 10, "US") is None  # 72 characters
    assert sender_for_provider(long + " ", "US") == long
    assert phone._to_e164.cache_info().currsize == numbers.currsize
    assert phone._sender_for_provider.cache_info().currsize == senders.currsize
    assert phone._to_e164.cache_info().misses == numbers.misses  # not even parsed


def test_a_number_at_the_bound_is_still_read() -> None:
    padded = f"{RECIPIENT:>{phone.MAX_NUMBER_CHARS}}"
    assert len(padded) == phone.MAX_NUMBER_CHARS
    assert to_e164(padded, "US") == RECIPIENT
