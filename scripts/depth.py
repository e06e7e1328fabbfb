"""Signal propagation at initialisation, measured against mean-field: `python scripts/depth.py --help` (`python -m study depth`)."""

import sys

from study.cli import main

sys.exit(main(["depth", *sys.argv[1:]]))
