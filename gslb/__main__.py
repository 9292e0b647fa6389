"""`python -m gslb` runs the gslb command (see gslb.cli)."""

from __future__ import annotations

import sys

from gslb.cli import main

if __name__ == "__main__":
    sys.exit(main())
