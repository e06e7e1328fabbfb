"""docs/findings.md, second edition: where the edge lies, why a setting fails, every claim with its
test. `plan` says what is run, `claims` how each verdict is reached, `document` writes it."""

from study.experiments.findings.document import COMMAND, write_findings
from study.experiments.findings.plan import FULL, QUICK, FindingsPlan

__all__ = ["COMMAND", "FULL", "QUICK", "FindingsPlan", "write_findings"]
