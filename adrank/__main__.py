"""`python -m adrank ...` is the `adrank` command."""

import sys

from adrank.cli import main

sys.exit(main())
