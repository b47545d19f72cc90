"""Signature verification, with Stripe's own signing scheme (stripe.WebhookSignature)."""

from __future__ import annotations

import logging
import time

import orjson
import pytest

from destination_perly.webhook_signature import (
    InvalidSignature,
    SecretsNotConfigured,
    SignatureVerifier,
    secrets_from_env,
)
from destination_perly.webhooks import DEFAULT_PATH
from unit_tests.webhooks.builders import OLD_SECRET, SECRET, T0, customer, delivery, event, sign
from unit_tests.webhooks.conftest import Receiver

BODY = orjson.dumps(event("customer.updated", customer(), T0))


def test_given_a_body_signed_with_the_secret_when_verified_then_it_passes() -> None:
    SignatureVerifier([SECRET]).verify(BODY, sign(BODY))


def test_given_a_tampered_body_when_verified_then_it_fails() -> None:
    header = sign(BODY)
    tampered = BODY.replace(b"cus_A", b"cus_B")
    with pytest.raises(InvalidSignature, match="No signatures found matching"):
        SignatureVerifier([SECRET]).verify(tampered, header)


def test_given_a_signature_older_than_the_tolerance_when_verified_then_it_fails() -> None:
    header = sign(BODY, timestamp=int(time.time()) - 301)
    with pytest.raises(InvalidSignature, match="tolerance"):
        SignatureVerifier([SECRET]).verify(BODY, header)


def test_given_a_longer_tolerance_when_an_old_signature_is_verified_then_it_passes() -> None:
    SignatureVerifier([SECRET], tolerance_seconds=900).verify(
        BODY, sign(BODY, timestamp=int(time.time()) - 600)
    )


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", f"t={int(time.time())},v0=abc"])
def test_given_a_missing_or_malformed_header_when_verified_then_it_fails(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        SignatureVerifier([SECRET]).verify(BODY, header)


def test_given_a_secret_being_rotated_when_either_signs_then_both_pass_until_the_old_is_removed() -> None:
    rotating = SignatureVerifier([SECRET, OLD_SECRET])
    rotating.verify(BODY, sign(BODY, SECRET))
    rotating.verify(BODY, sign(BODY, OLD_SECRET))
    with pytest.raises(InvalidSignature):
        SignatureVerifier([SECRET]).verify(BODY, sign(BODY, OLD_SECRET))


def test_given_stripe_signs_with_old_and_new_secrets_when_only_the_new_is_configured_then_it_passes() -> None:
    now = int(time.time())
    old, new = sign(BODY, OLD_SECRET, now), sign(BODY, SECRET, now)
    both = f"{old},v1={new.split('v1=')[1]}"  # t=..,v1=<old>,v1=<new>: Stripe's header during a roll
    SignatureVerifier([SECRET]).verify(BODY, both)


def test_given_a_body_that_is_not_utf8_when_verified_then_it_fails() -> None:
    with pytest.raises(InvalidSignature, match="UTF-8"):
        SignatureVerifier([SECRET]).verify(b"\xff\xfe", "t=1,v1=00")


def test_given_the_env_variable_when_read_then_every_secret_is_kept_and_blanks_dropped() -> None:
    env = {"PERLY_WEBHOOK_SECRETS": f" {SECRET} ,, {OLD_SECRET}"}
    assert secrets_from_env(env) == [SECRET, OLD_SECRET]


@pytest.mark.parametrize("value", ["", " , ", "sk_test_not_a_webhook_secret"])
def test_given_no_usable_secret_when_read_then_a_clear_error_names_no_secret(value: str) -> None:
    with pytest.raises(SecretsNotConfigured) as raised:
        secrets_from_env({"PERLY_WEBHOOK_SECRETS": value})
    assert "PERLY_WEBHOOK_SECRETS" in str(raised.value)
    assert "sk_test_not" not in str(raised.value)


def test_the_verifier_never_shows_its_secrets() -> None:
    shown = repr(SignatureVerifier([SECRET, OLD_SECRET]))
    assert SECRET not in shown
    assert OLD_SECRET not in shown


# --- over HTTP: rejected deliveries store nothing ----------------------------------------------------
def _stored_events(receiver: Receiver) -> int:
    return receiver.rows("SELECT COUNT(*) AS n FROM perly_webhook_events")[0]["n"]


def test_given_a_valid_signature_when_posted_then_200_and_stored(receiver: Receiver) -> None:
    response = receiver.post(delivery(event("customer.updated", customer(), T0)))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    assert _stored_events(receiver) == 1


def test_given_the_old_secret_during_rotation_when_posted_then_200(receiver: Receiver) -> None:
    response = receiver.post(delivery(event("customer.updated", customer(), T0), secret=OLD_SECRET))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda d: d["headers"].pop("Stripe-Signature"), id="missing-header"),
        pytest.param(
            lambda d: d.update(content=d["content"].replace(b"cus_A", b"cus_Z")), id="tampered-body"
        ),
        pytest.param(
            lambda d: d["headers"].update({"Stripe-Signature": sign(d["content"], "whsec_someone_else")}),
            id="unknown-secret",
        ),
        pytest.param(
            lambda d: d["headers"].update(
                {"Stripe-Signature": sign(d["content"], timestamp=int(time.time()) - 600)}
            ),
            id="stale-timestamp",
        ),
    ],
)
def test_given_a_bad_signature_when_posted_then_400_and_nothing_stored(
    receiver: Receiver, spoil, caplog: pytest.LogCaptureFixture
) -> None:
    deliver = delivery(event("customer.updated", customer(), T0))
    spoil(deliver)
    with caplog.at_level(logging.DEBUG):
        response = receiver.client.post(DEFAULT_PATH, **deliver)
    assert response.status_code == 400
    assert "signature" in response.json()["error"]
    receiver.wait()
    assert _stored_events(receiver) == 0
    assert "stripe_customers" not in receiver.store.tables()
    assert SECRET not in caplog.text
    assert OLD_SECRET not in caplog.text
    assert SECRET not in response.text
