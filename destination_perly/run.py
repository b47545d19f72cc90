"""Entry point of the `destination-perly` console script."""

from __future__ import annotations

import sys


def run() -> None:
    """`spec` is answered before the CDK is imported, which takes most of a second (see connector_spec)."""
    if sys.argv[1:] == ["spec"]:
        import connector_spec
        from destination_perly.spec import destination_spec

        connector_spec.print_spec_message(destination_spec())
        return
    from destination_perly.destination import DestinationPerly

    DestinationPerly().run(sys.argv[1:])
