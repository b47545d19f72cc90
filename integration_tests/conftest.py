"""Shared fixtures: a running Stripe emulator and a factory for tests that need their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from integration_tests.stripe_emulator import Emulator

SHARED_BOOK: dict[str, Any] = {"customers": 300, "seed": 42}


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """One seeded ~300-customer book for the whole session. Read only: never advance its clock or
    change its faults (use `emulator_factory` for that)."""
    with Emulator(**SHARED_BOOK) as running:
        yield running


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., Emulator]]:
    """`emulator_factory(customers=..., seed=..., **options)` -> a started Emulator of your own,
    stopped at the end of the test."""
    started: list[Emulator] = []

    def make(**options: Any) -> Emulator:
        options.setdefault("customers", 100)
        options.setdefault("seed", 7)
        running = Emulator(**options).start()
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()
