"""Test data shared by the suite; every phone number and text a test sends is listed here."""

from __future__ import annotations

from typing import Any

DEFINITION_ID = "b1b25a46-6da0-4c08-9cf3-505e613c8e30"
SENDER = "12065550100"
"""Our number as Dataverse stores it: country code + digits, no '+'."""
SENDER_E164 = "+12065550100"
RECIPIENT = "+14255550199"
RECIPIENT_NATIONAL = "(425) 555-0147"
RECIPIENT_NATIONAL_E164 = "+14255550147"
OTHER_RECIPIENT = "+14255550123"
UK_RECIPIENT = "447911123456"
UK_RECIPIENT_E164 = "+447911123456"
INVALID_RECIPIENT = "+1425555"
TEXT = "Hi Ana, your code is 123456"
OTHER_TEXT = "Hello Bo, your table is ready"
REPLY_TEXT = "Yes please, 5pm works for me"
"""A customer's reply (inbound)."""

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-test-auth-token-0001"
TWILIO_SERVICE_SID = "MG" + "fedcba9876543210" * 2

SENSITIVE = [
    SENDER,
    SENDER_E164,
    RECIPIENT,
    RECIPIENT[2:],  # national digits
    RECIPIENT_NATIONAL,
    RECIPIENT_NATIONAL_E164,
    OTHER_RECIPIENT,
    UK_RECIPIENT,
    INVALID_RECIPIENT,
    TEXT,
    OTHER_TEXT,
    REPLY_TEXT,
    TWILIO_TOKEN,
]
"""Strings that must never appear in a log record at INFO or above."""


def payload(**overrides: Any) -> dict[str, Any]:
    """A valid outbound payload as Dataverse sends it, with fields replaced as given."""
    body: dict[str, Any] = {
        "ChannelDefinitionId": DEFINITION_ID,
        "RequestId": "0f7e5c1a-2f0b-4f7e-9a55-7d4c2b1e9d10",
        "From": SENDER,
        "To": RECIPIENT,
        "Message": {"text": TEXT},
        "MarketingAppContext": {
            "CustomerJourneyId": None,
            "UserId": None,
            "UserEntityType": "contact",
            "IsTestSend": True,
        },
    }
    body.update(overrides)
    return body


# --- Azure Communication Services ---
ACS_ACCESS_KEY = "YWNzLXRlc3QtYWNjZXNzLWtleS0wMDAxLW5vdC1hLXJlYWwtb25l"
"""A base64 access key (of ``acs-test-access-key-0001-not-a-real-one``), as the portal shows."""
WEBHOOK_SECRET = "event-grid-test-secret-0001"
"""CHANNEL_WEBHOOK_SECRET: the ``secret`` query parameter of the Event Grid subscriptions."""
UNICODE_TEXT = "Grüße aus Köln 👋 ваш код 4711"
"""A text outside GSM-7 and ASCII: the bytes signed must be the bytes sent."""

SENSITIVE.extend([ACS_ACCESS_KEY, WEBHOOK_SECRET, UNICODE_TEXT, RECIPIENT[1:]])

# --- Vonage and Telnyx ---
VONAGE_APPLICATION_ID = "5f2b8c4e-1a3d-4e6f-9b7a-0c8d2e4f6a1b"
VONAGE_SIGNATURE_SECRET = "vonage-test-signature-secret-0001-not-real"
TELNYX_API_KEY = "KEY0190ABCDEF_telnyx-test-api-key-0001"

SENSITIVE.extend([VONAGE_SIGNATURE_SECRET, TELNYX_API_KEY])

# --- Several providers (CHANNEL_ROUTES) ---
OTHER_DEFINITION_ID = "0c6a3f7e-54d2-4b8e-a1f9-2e7d6c5b4a39"
"""A second channel definition, routed to another provider than DEFINITION_ID."""
EU_SENDER = "447911123457"
"""A second number of ours (UK), as Dataverse stores it."""
EU_SENDER_E164 = "+447911123457"

SENSITIVE.extend([EU_SENDER, EU_SENDER_E164])

# --- Sinch ---
SINCH_SERVICE_PLAN_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
SINCH_API_TOKEN = "sinch-test-api-token-0001-not-real"
SINCH_WEBHOOK_SECRET = "sinch-test-webhook-secret-0001"

SENSITIVE.extend([SINCH_API_TOKEN, SINCH_WEBHOOK_SECRET])
