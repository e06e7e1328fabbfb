"""initstudy: which weight initialisations and GeneralRelu shapes train, and how reliably across seeds."""

__version__ = "0.1.0"
