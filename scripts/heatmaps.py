"""Draw a stored study's heatmaps: `python scripts/heatmaps.py --name NAME` (`python -m study heatmaps`)."""

import sys

from study.cli import main

sys.exit(main(["heatmaps", *sys.argv[1:]]))
