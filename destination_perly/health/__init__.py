"""The pure billing-health engine (PERLY_CONTRACT.md)."""
