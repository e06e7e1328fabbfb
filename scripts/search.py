"""Run or continue a study: `python scripts/search.py --help` (same as `python -m study search`)."""

import sys

from study.cli import main

sys.exit(main(["search", *sys.argv[1:]]))
