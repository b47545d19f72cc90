import gc
import sys

# How the entrypoint serialises a STATE message (orjson keeps the model's field order: type first).
STATE_PREFIX = '{"type":"STATE"'


def run() -> None:
    """`airbyte_cdk.entrypoint.launch`, with an entrypoint that explains a bad key in words, and each
    STATE flushed at once: the CDK's print buffer (and a piped stdout) would hold a checkpoint until
    later output, and a kill meanwhile loses it. Importing the CDK takes most of a second: `spec` is
    answered without it (see spec_message.py), and `read` makes its first requests meanwhile (see
    early.py)."""
    args = sys.argv[1:]
    if args == ["spec"]:
        import connector_spec

        from .spec_message import spec_json

        connector_spec.print_spec_message(spec_json())
        return
    # No collection while the CDK is imported: its full passes would walk the import's objects and the
    # pages read meanwhile (see early.py), again and again (0.2-0.3 CPU seconds of the import's 1.2).
    gc.disable()
    from .early import begin_read

    early = begin_read(args)
    try:
        from airbyte_cdk.logger import PRINT_BUFFER

        from .entrypoint import ClearConfigEntrypoint
        from .source import SourcePerlyStripe

        # The CDK's many long-lived objects out of the garbage collector's sight: its full passes
        # during the read, and the last one at exit (a tenth of a second), no longer walk them all.
        gc.freeze()
        gc.enable()
        entrypoint = ClearConfigEntrypoint(SourcePerlyStripe(early=early))
        with PRINT_BUFFER:
            for message in entrypoint.run(entrypoint.parse_args(args)):
                print(f"{message}\n", end="")
                if message.startswith(STATE_PREFIX):
                    PRINT_BUFFER.flush()
    finally:
        if early is not None:
            early.stop()  # a read begun but not taken (e.g. the CDK refused the catalog) ends here
