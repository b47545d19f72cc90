"""Entry point of the `destination-perly` console script."""

from __future__ import annotations

import sys

from destination_perly.destination import DestinationPerly


def run() -> None:
    DestinationPerly().run(sys.argv[1:])
