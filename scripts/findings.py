"""Run the findings studies and write docs/findings.md: `python scripts/findings.py` (`python -m study findings`)."""

import sys

from study.cli import main

sys.exit(main(["findings", *sys.argv[1:]]))
