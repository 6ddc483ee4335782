"""Access tokens from the app's one credential, cached per scope and fetched once at a time."""

from __future__ import annotations

import threading
import time

from azure.core.credentials import AccessToken, TokenCredential

REFRESH_MARGIN_SECONDS = 300
"""Fetch a new token this long before the old one expires (azure-identity's own margin)."""


class TokenSource:
    """Bearer tokens for any scope from one credential.

    azure-identity caches tokens too, but concurrent first requests each go to the
    token endpoint; the lock here makes a burst of webhooks cost one token request.
    """

    def __init__(self, credential: TokenCredential) -> None:
        self.credential = credential
        self._tokens: dict[str, AccessToken] = {}
        self._lock = threading.Lock()

    def token(self, scope: str) -> str:
        """A valid bearer token for ``scope``."""
        cached = self._tokens.get(scope)
        if cached is None or cached.expires_on - time.time() < REFRESH_MARGIN_SECONDS:
            with self._lock:
                cached = self._tokens.get(scope)
                if cached is None or cached.expires_on - time.time() < REFRESH_MARGIN_SECONDS:
                    cached = self._tokens[scope] = self.credential.get_token(scope)
        return cached.token
