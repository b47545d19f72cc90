"""Keys, rate limiting and seeded fault injection: the parts of the emulator that are not the book."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

# Every read permission the source needs (DESIGN.md: rk_test_perly_full).
FULL_READ = frozenset(
    {
        "rak_customer_read",
        "rak_subscription_read",
        "rak_invoice_read",
        "rak_charge_read",
        "rak_plan_read",
        "rak_product_read",
        "rak_coupon_read",
        "rak_event_read",
        "rak_connected_account_read",
    }
)
BILLING_READ = frozenset(
    {"rak_subscription_read", "rak_invoice_read", "rak_charge_read", "rak_customer_read"}
)


@dataclass(frozen=True)
class KeyInfo:
    livemode: bool
    permissions: frozenset[str] | None  # None: a secret key, allowed everything


def default_keys() -> dict[str, KeyInfo]:
    return {
        "sk_test_perly_demo": KeyInfo(False, None),
        "sk_live_perly_demo": KeyInfo(True, None),
        "rk_test_perly_billing": KeyInfo(False, BILLING_READ),
        "rk_test_perly_full": KeyInfo(False, FULL_READ),
    }


def key_info(key: str, permissions: frozenset[str] | set[str] | list[str] | None) -> KeyInfo:
    if not key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
        raise ValueError("keys start with sk_test_, sk_live_, rk_test_ or rk_live_")
    livemode = key.startswith(("sk_live_", "rk_live_"))
    if key.startswith("rk_"):
        return KeyInfo(livemode, frozenset(permissions or ()))
    return KeyInfo(livemode, None if permissions is None else frozenset(permissions))


def mask_key(key: str) -> str:
    """Stripe's way of naming a key in errors: the prefix, stars, the last few characters."""
    prefix = key[:8] if key[:3] in ("sk_", "rk_", "pk_") else ""
    tail = key[-4:] if len(key) >= 16 else ""
    return f"{prefix}{'*' * 12}{tail}"


def mask_restricted(key: str) -> str:
    return f"{key[:8]}***{key[-6:]}" if len(key) > 14 else "***"


class TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)  # a burst of one second's worth, at least one request
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


FAULT_KINDS = ("500", "502", "503", "lock_timeout", "reset", "truncate", "slow")


def parse_faults(spec: str | dict[str, float] | None) -> dict[str, float]:
    """`"500:0.01,reset:0.02"` or a dict -> {kind: probability}, checked."""
    if not spec:
        return {}
    if isinstance(spec, str):
        pairs = {}
        for part in spec.split(","):
            kind, _, rate = part.strip().partition(":")
            pairs[kind] = float(rate)
        spec = pairs
    unknown = set(spec) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    if sum(spec.values()) > 1:
        raise ValueError("fault rates add up to more than 1")
    return {kind: float(rate) for kind, rate in spec.items() if rate > 0}


class Faults:
    """Seeded: the same seed and request order give the same faults."""

    def __init__(self, rates: dict[str, float], seed: int = 0, slow_ms: int = 2000) -> None:
        self.rates = rates
        self.seed = seed
        self.slow_ms = slow_ms
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def pick(self) -> str | None:
        if not self.rates:
            return None
        with self.lock:
            roll = self.rng.random()
        for kind in FAULT_KINDS:
            rate = self.rates.get(kind, 0.0)
            if roll < rate:
                return kind
            roll -= rate
        return None
