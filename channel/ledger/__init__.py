"""The message ledger and its storage backends."""

from channel.ledger.messages import Claim, Completed, MessageLedger, RequestRecord, fingerprint

__all__ = ["Claim", "Completed", "MessageLedger", "RequestRecord", "fingerprint"]
