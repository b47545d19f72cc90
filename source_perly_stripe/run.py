import sys

# How the entrypoint serialises a STATE message (orjson keeps the model's field order: type first).
STATE_PREFIX = '{"type":"STATE"'


def run() -> None:
    """`airbyte_cdk.entrypoint.launch`, with an entrypoint that explains a bad key in words, and each
    STATE flushed at once: the CDK's print buffer (and a piped stdout) would hold a checkpoint until
    later output, and a kill meanwhile loses it. `spec` needs no CDK (see spec_message.py): it is
    answered before the CDK is imported, which takes most of a second."""
    if sys.argv[1:] == ["spec"]:
        from .spec_message import spec_message_line

        print(spec_message_line(), flush=True)
        return
    from airbyte_cdk.logger import PRINT_BUFFER

    from .check import ClearConfigEntrypoint
    from .source import SourcePerlyStripe

    entrypoint = ClearConfigEntrypoint(SourcePerlyStripe())
    with PRINT_BUFFER:
        for message in entrypoint.run(entrypoint.parse_args(sys.argv[1:])):
            print(f"{message}\n", end="")
            if message.startswith(STATE_PREFIX):
                PRINT_BUFFER.flush()
