"""Phone numbers: E.164 normalisation for providers and masking for logs."""

from __future__ import annotations

import functools

import phonenumbers

MAX_NUMBER_CHARS = 64
"""Longer input is not a phone number (E.164 has at most 15 digits): it is not parsed,
and not cached, so the caches stay small whatever callers send."""


def to_e164(raw: str, default_region: str) -> str | None:
    """The number in E.164 (``+12065550100``), or None when it is not a valid number.

    Dataverse usually stores numbers as country code + digits with no ``+``
    (``12065550100``): digits-only input valid when read as international is taken
    so; anything else is read in ``default_region``.
    """
    if len(raw) > MAX_NUMBER_CHARS:
        return None
    return _to_e164(raw, default_region)


@functools.lru_cache(maxsize=4096)
def _to_e164(raw: str, default_region: str) -> str | None:
    text = raw.strip()
    if text.isdigit():
        number = _parse("+" + text, None)
        if number is not None:
            return number
    return _parse(text, default_region)


def sender_for_provider(raw: str, default_region: str) -> str:
    """The sender as a provider wants it: E.164 for numbers, anything else unchanged.

    Alphanumeric sender ids (``Contoso``) and short codes (``89898``) are not
    E.164 numbers and must reach the provider as written.
    """
    if len(raw) > MAX_NUMBER_CHARS:
        return raw.strip()
    return _sender_for_provider(raw, default_region)


@functools.lru_cache(maxsize=256)
def _sender_for_provider(raw: str, default_region: str) -> str:
    return to_e164(raw, default_region) or raw.strip()


def mask(value: str | None) -> str:
    """A number with its middle hidden (``+1******0199``), safe for logs at any level."""
    if not value:
        return "-"
    if len(value) <= 6:
        return "*" * len(value)
    return value[:2] + "*" * (len(value) - 6) + value[-4:]


def _parse(text: str, region: str | None) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def is_known_region(region: str) -> bool:
    """True for a region code libphonenumber has numbering rules for (``GB``, not ``UK``)."""
    return region in phonenumbers.SUPPORTED_REGIONS


def international(number: str, default_region: str) -> str:
    """A number as a provider wrote it, in E.164 with its ``+``.

    Several providers (ACS, Vonage) write international numbers without ``+``
    (``14255550199``). Short codes and alphanumeric ids stay as they are.
    """
    if number.startswith("+"):
        return number
    e164 = to_e164(number, default_region)
    if e164 is not None:
        return e164
    if number.isdigit() and len(number) >= 8:  # a long number libphonenumber does not know
        return "+" + number
    return number
