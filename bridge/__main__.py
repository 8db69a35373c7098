"""`python -m bridge` is the `customer-bridge` command."""

import sys

from bridge.cli import main

sys.exit(main())
