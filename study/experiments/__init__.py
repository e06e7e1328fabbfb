"""Experiments that drive the core (studies, training, plots) to answer one question each; the core
never imports them. `depth`: signal propagation through depth at initialisation. `findings`: the
studies and the document behind docs/findings.md."""
