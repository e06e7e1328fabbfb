"""Model-epochs per second of the ways to train a study (lesson loop, single model, population), and
the quick study against plain PyTorch epochs.

    python scripts/bench_study.py            # benchmarks/study_speed.py's and quick_study.py's tables, about 6 minutes on 2 CPU cores
"""

import sys

from study.cli import main

sys.exit(main(["bench", "study", *sys.argv[1:]]))
