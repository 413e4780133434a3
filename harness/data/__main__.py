"""``python -m harness.data``: see harness/data/cli.py."""

import sys

from harness.data.cli import main

sys.exit(main())
