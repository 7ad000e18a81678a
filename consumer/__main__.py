"""`python -m consumer` is the `ghl-consumer` console script."""

import sys

from consumer.commands.cli import main

sys.exit(main())
