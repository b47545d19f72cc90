"""The CDK's standard source tests (spec, check, discover, basic read) against the local Stripe
emulator. Run with `pytest -m "not image_tests" integration_tests/test_source_standard.py`.

The scenarios come from integration_tests/acceptance-test-config.yml. Their configs name
`http://emulator.invalid`; the connector under test swaps in the URL of an emulator started for
this module on a free port, so the config files stay static."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from airbyte_cdk.test.models import ConnectorTestScenario
from airbyte_cdk.test.standard_tests import SourceTestSuiteBase
from airbyte_cdk.test.standard_tests.pytest_hooks import pytest_generate_tests  # noqa: F401 - scenarios

from integration_tests.stripe_emulator import Emulator
from source_perly_stripe.source import SourcePerlyStripe

pytestmark = pytest.mark.emulator

PLACEHOLDER_URL = "http://emulator.invalid"
_running: dict[str, Emulator] = {}


class EmulatorBoundSource(SourcePerlyStripe):
    """The real source; only the placeholder base URL of the scenario configs is replaced."""

    def configure(self, config: Mapping[str, Any], temp_dir: str) -> Mapping[str, Any]:
        configured = dict(super().configure(config, temp_dir))
        if configured.get("base_url") == PLACEHOLDER_URL and "emulator" in _running:
            configured["base_url"] = _running["emulator"].url
        return configured


@pytest.fixture(scope="module", autouse=True)
def running_emulator() -> Iterator[Emulator]:
    with Emulator(customers=120, seed=7) as emulator:
        _running["emulator"] = emulator
        yield emulator
        _running.pop("emulator", None)


class TestPerlyStripeSource(SourceTestSuiteBase):
    @classmethod
    def get_connector_root_dir(cls) -> Path:
        return Path(__file__).parent

    @classmethod
    def create_connector(cls, scenario: ConnectorTestScenario | None) -> EmulatorBoundSource:
        return EmulatorBoundSource()
