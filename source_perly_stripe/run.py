import sys

from airbyte_cdk.logger import PRINT_BUFFER

from .check import ClearConfigEntrypoint
from .source import SourcePerlyStripe


def run() -> None:
    """`airbyte_cdk.entrypoint.launch`, with an entrypoint that explains a bad key in words."""
    entrypoint = ClearConfigEntrypoint(SourcePerlyStripe())
    with PRINT_BUFFER:
        for message in entrypoint.run(entrypoint.parse_args(sys.argv[1:])):
            print(f"{message}\n", end="")
