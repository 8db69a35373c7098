"""`python -m bridge` is the `customer-bridge` command."""

import sys

from bridge.cli import main

if __name__ == "__main__":  # not when a worker process imports it
    sys.exit(main())
