"""`python -m bridge` and the `customer-bridge` command: stop signals first, then the rest."""

import sys

from bridge.signals import catch_early


def main() -> int:
    """The entry point: catch SIGTERM before the (slow) imports of the bridge, then run it."""
    catch_early(sys.argv)
    from bridge.cli import main as command  # noqa: PLC0415 - only after the signals are caught

    return command()


if __name__ == "__main__":  # not when a worker process imports it
    sys.exit(main())
