"""initstudy: which weight initialisations and GeneralRelu shapes train, and how reliably across seeds.

    import study
    s = study.search(name="nb", leak=(0, .1, .2), sub=(0, .4), seeds=(0, 1, 2), model="mlp")
    s.frame()                   # pandas: one row per setting x seed
    s.heatmap("frac_trained")   # a matplotlib Figure
    study.train(model="cnn", leak=.1, sub=.4, seed=0)
    study.load("quick")         # a stored study

See `study.api` for the keywords; `python -m study --help` for the command line.
"""

__version__ = "0.3.0"

from study.api import Study, load, search, train  # noqa: E402
from study.design import Range  # noqa: E402
from study.errors import BadInput, FieldError, StorageFault  # noqa: E402

__all__ = ["BadInput", "FieldError", "Range", "StorageFault", "Study", "load", "search", "train"]
