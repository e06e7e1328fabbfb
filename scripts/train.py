"""Train one configuration: `python scripts/train.py --help` (same as `python -m study train`)."""

import sys

from study.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
