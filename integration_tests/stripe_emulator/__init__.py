"""A local Stripe for tests, demos and benchmarks (see docs/DESIGN.md, "The local Stripe emulator")."""

from .book import DEFAULT_NOW
from .emulator import Emulator
from .model import API_VERSION

__all__ = ["API_VERSION", "DEFAULT_NOW", "Emulator"]
