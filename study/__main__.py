import gc
import sys

from study.cli import main

code = main()
# Everything the command wrote is written, and the storage closes at exit (`study.storage`): the
# interpreter's teardown need not collect torch's and matplotlib's objects again, several times
# over (a second of every command, measured).
gc.freeze()
sys.exit(code)
