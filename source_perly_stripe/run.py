import sys

from airbyte_cdk.entrypoint import launch

from .source import SourcePerlyStripe


def run() -> None:
    launch(SourcePerlyStripe(), sys.argv[1:])
