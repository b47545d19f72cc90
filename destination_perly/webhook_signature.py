"""Stripe-Signature verification through the stripe library, with several secrets during rotation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import stripe

SECRETS_ENV = "PERLY_WEBHOOK_SECRETS"
DEFAULT_TOLERANCE_SECONDS = stripe.Webhook.DEFAULT_TOLERANCE


class SecretsNotConfigured(RuntimeError):
    pass


class InvalidSignature(Exception):
    """The request is not provably from Stripe, or is too old. The message never holds a secret."""


def secrets_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The signing secrets in PERLY_WEBHOOK_SECRETS (comma-separated: new and old while rotating)."""
    raw = (os.environ if environ is None else environ).get(SECRETS_ENV, "")
    secrets = [part.strip() for part in raw.split(",") if part.strip()]
    if not secrets:
        raise SecretsNotConfigured(
            f"{SECRETS_ENV} is not set: give the endpoint's signing secret (whsec_...)"
        )
    for position, secret in enumerate(secrets, start=1):
        if not secret.startswith("whsec_"):
            # Say which one without echoing any part of it.
            raise SecretsNotConfigured(f"{SECRETS_ENV}: secret #{position} does not start with whsec_")
    return secrets


class SignatureVerifier:
    """Accepts a body when its header verifies with any configured secret within the tolerance."""

    def __init__(self, secrets: Sequence[str], tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS):
        if not secrets:
            raise SecretsNotConfigured("no webhook signing secret configured")
        self._secrets = tuple(secrets)
        self.tolerance_seconds = tolerance_seconds

    def __repr__(self) -> str:  # never show the secrets, even in a debugger or a traceback
        return f"SignatureVerifier(secrets=<{len(self._secrets)} hidden>, tolerance={self.tolerance_seconds})"

    def verify(self, payload: bytes, header: str | None) -> None:
        """Returns when the signature holds; raises InvalidSignature otherwise."""
        if not header:
            raise InvalidSignature("missing Stripe-Signature header")
        try:
            body = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidSignature("body is not UTF-8") from None
        reasons = []
        for secret in self._secrets:
            try:
                stripe.WebhookSignature.verify_header(body, header, secret, self.tolerance_seconds)
                return
            except stripe.SignatureVerificationError as error:
                reasons.append(str(error.user_message or error))
        # A matching signature with an old timestamp is the more useful thing to report.
        stale = [reason for reason in reasons if "tolerance" in reason]
        raise InvalidSignature(stale[0] if stale else reasons[0])
