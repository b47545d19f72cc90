"""The pure billing-health engine (PERLY_CONTRACT.md): no I/O, no clock (`as_of` is passed in)."""

from destination_perly.health.engine import evaluate_customer
from destination_perly.health.model import (
    CustomerBundle,
    CustomerEvaluation,
    CustomerHealth,
    HealthConfig,
    MrrMovement,
    MrrSnapshot,
    PlanChange,
    RiskPolicy,
    TierRule,
)

__all__ = [
    "CustomerBundle",
    "CustomerEvaluation",
    "CustomerHealth",
    "HealthConfig",
    "MrrMovement",
    "MrrSnapshot",
    "PlanChange",
    "RiskPolicy",
    "TierRule",
    "evaluate_customer",
]
