"""The largest stable learning rate of each setting: `python scripts/edge.py --help` (same as `python -m study edge`)."""

import sys

from study.cli import main

sys.exit(main(["edge", *sys.argv[1:]]))
