"""Signal propagation through depth at init: `python scripts/depth.py --help` (`python -m study depth`)."""

import sys

from study.cli import main

sys.exit(main(["depth", *sys.argv[1:]]))
