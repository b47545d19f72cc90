"""The emulator's request log stays bounded however many requests it serves."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from integration_tests.stripe_emulator.request_log import RequestLog


def entry(number: int, status: int = 200) -> dict[str, Any]:
    return {"path": f"/v1/customers/{number}", "status": status}


def test_given_more_requests_than_it_keeps_then_only_the_newest_are_held_but_all_are_counted() -> None:
    log = RequestLog(keep=5)
    for number in range(12):
        log.append(entry(number, 500 if number % 4 == 0 else 200))
    assert len(log) == 12
    assert log.dropped == 7
    assert [e["path"] for e in log] == [f"/v1/customers/{n}" for n in range(7, 12)]
    assert log.statuses() == {500: 3, 200: 9}
    assert log[-1]["path"] == "/v1/customers/11"
    assert log[8]["path"] == "/v1/customers/8"  # indexes count from the very first request
    with pytest.raises(IndexError):
        log[3]  # noqa: B018 - dropped: no longer held
    with pytest.raises(IndexError):
        log[12]  # noqa: B018


def test_given_a_count_taken_before_some_requests_then_slicing_from_it_gives_those_requests() -> None:
    log = RequestLog(keep=100)
    for number in range(250):
        log.append(entry(number))
    before = len(log)
    for number in range(250, 260):
        log.append(entry(number))
    assert [e["path"] for e in log[before:]] == [f"/v1/customers/{n}" for n in range(250, 260)]
    assert len(log[:before]) == 90  # the part of the earlier ones still held
    assert log[before:before] == []


def test_given_concurrent_appends_then_none_is_lost_from_the_count() -> None:
    log = RequestLog(keep=50)

    def many() -> None:
        for number in range(2000):
            log.append(entry(number))

    threads = [threading.Thread(target=many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(log) == 8000
    assert len(log.tail()) == 50


@pytest.mark.emulator
def test_given_a_running_emulator_then_its_log_is_bounded_and_state_counts_every_request(
    emulator_factory: Any,
) -> None:
    emu = emulator_factory(customers=5, request_log_size=3)
    with requests.Session() as session:
        for _ in range(8):
            session.get(emu.url + "/v1/customers", auth=("sk_test_perly_demo", ""), timeout=10)
        session.get(emu.url + "/v1/customers", timeout=10)  # no key: 401
    assert len(emu.request_log) == 9
    assert [e["status"] for e in emu.request_log] == [200, 200, 401]
    state = requests.get(emu.url + "/_emulator/state", timeout=10).json()
    assert state["requests"] == 9
    assert state["requests_by_status"] == {"200": 8, "401": 1}
