"""Form-encoded webhook bodies (Twilio, Plivo): the fields of a call, by name."""

from __future__ import annotations

from urllib.parse import parse_qs

from channel.errors import BadRequest
from channel.providers.base import Webhook

Form = dict[str, list[str]]
"""Every field of a form with all its values, in the order sent."""


def form(hook: Webhook) -> Form:
    """The call's form fields; BadRequest when the body is not UTF-8 form data.

    Blank values are kept: a provider signs them too.
    """
    try:
        text = hook.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body", "not UTF-8 form data") from None
    return parse_qs(text, keep_blank_values=True)


def one(fields: Form, name: str) -> str:
    """The first value of field ``name``, or "" when it is absent."""
    values = fields.get(name)
    return values[0] if values else ""
