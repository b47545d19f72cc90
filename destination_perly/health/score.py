"""The five flags' reasons and the risk score (contract sections 2 and 6).

Weights (points added when a flag is raised; they sum to 100, so the score is 0-100 and only
grows as more flags are raised):

    flag_payment_failures  30   money is already failing to arrive
    flag_invoice_aging     25   money is owed and late
    flag_mrr_contraction   20   the customer is paying less than a month ago
    flag_downgrade         15   the customer moved to a cheaper plan
    flag_trial_expiring    10   a trial ends soon with no way to pay
"""

from __future__ import annotations

WEIGHTS: dict[str, int] = {
    "flag_payment_failures": 30,
    "flag_invoice_aging": 25,
    "flag_mrr_contraction": 20,
    "flag_downgrade": 15,
    "flag_trial_expiring": 10,
}


def risk_score(raised: dict[str, bool]) -> int:
    return min(100, sum(weight for flag, weight in WEIGHTS.items() if raised.get(flag)))
