"""The CDK entrypoint the `source-perly-stripe` command runs (see run.py): the CDK's, but for how a
config is validated and how secrets are masked. Kept apart from check.py, which needs no CDK: `read`
plans and starts its requests before the CDK is imported (see early.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airbyte_cdk.entrypoint import AirbyteEntrypoint
from airbyte_cdk.models import ConnectorSpecification, FailureType  # type: ignore[attr-defined]
from airbyte_cdk.utils.airbyte_secrets_utils import get_secrets, update_secrets
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from .check import config_problem


class ClearConfigEntrypoint(AirbyteEntrypoint):
    """The CDK entrypoint, but a config is validated by `config_problem` instead of the CDK's schema
    check, so a bad config is explained in words and no error can quote a secret in any form.

    Use it where `launch` would build an `AirbyteEntrypoint` (see `source_perly_stripe.run`).
    """

    @staticmethod
    def validate_connection(source_spec: ConnectorSpecification, config: Mapping[str, Any]) -> None:
        problem = config_problem(config)
        if problem:
            raise AirbyteTracedException(
                message=problem, internal_message=problem, failure_type=FailureType.config_error
            )

    @staticmethod
    def set_up_secret_filter(config: Mapping[str, Any], connection_specification: Mapping[str, Any]) -> None:
        """The CDK masks each secret by its exact text; the key is used stripped, and a message may
        show it escaped, so every such form is masked too."""
        if not isinstance(config, Mapping):
            return
        update_secrets(
            sorted(
                {
                    form
                    for value in get_secrets(connection_specification, config)
                    for form in secret_forms(value)
                },
                key=len,
                reverse=True,
            )
        )


def secret_forms(value: object) -> set[str]:
    """`value` as it may appear in a message: as is or stripped, each raw or escaped (JSON, Python)."""
    text = str(value)
    return {
        shown
        for form in (text, text.strip())
        for shown in (
            form,
            json.dumps(form)[1:-1],
            json.dumps(form, ensure_ascii=False)[1:-1],
            repr(form)[1:-1],
        )
        if shown
    }
