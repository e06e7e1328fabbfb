"""Model-epochs per second of the ways to train a study: lesson loop, single model, population.

    python scripts/bench_study.py            # the table of benchmarks/study_speed.py, about 5 minutes on 2 CPU cores
"""

import sys

from study.cli import main

sys.exit(main(["bench", "study", *sys.argv[1:]]))
