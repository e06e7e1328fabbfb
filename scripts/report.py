"""Write a stored study's report: `python scripts/report.py --name NAME` (`python -m study report`)."""

import sys

from study.cli import main

sys.exit(main(["report", *sys.argv[1:]]))
