"""Form-encoded webhook bodies (Twilio, Plivo): the fields of a call, by name."""

from __future__ import annotations

from channel.providers.base import Webhook

Form = dict[str, list[str]]
"""Every field of a form with all its values, in the order sent."""


def form(hook: Webhook) -> Form:
    """The call's form fields; BadRequest when the body is not UTF-8 form data.

    Blank values are kept: a provider signs them too. Parsed once per call (the
    signature check and the reading of the fields share it); do not change it.
    """
    return hook.form


def one(fields: Form, name: str) -> str:
    """The first value of field ``name``, or "" when it is absent."""
    values = fields.get(name)
    return values[0] if values else ""
