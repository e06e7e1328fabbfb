"""Where a study is kept: its name and storage URL (`StudyPlace`), and the files beside it.

The storage layer's light part, without Optuna or SQLAlchemy, so that the command line can build its
flags from it; opening the storage is `study.storage`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from study.config import describe
from study.errors import BadInput, FieldError

STORAGE_ENV = "INITSTUDY_STORAGE"  # the default storage URL: a password in it is not on a command line
SQLITE_PREFIX = "sqlite:///"


def sqlite_path(url: str) -> Path | None:
    return Path(url[len(SQLITE_PREFIX):]) if url.startswith(SQLITE_PREFIX) else None


@dataclass(frozen=True)
class StudyPlace:
    """Which study, in which storage."""

    name: str = field(default="quick", metadata=describe("study name"))
    storage: str | None = field(
        default=None,
        metadata=describe(f"Optuna storage URL (default: ${STORAGE_ENV} if set, else sqlite:///studies/NAME.db); "
                          "for PostgreSQL leave the password out and let libpq read PGPASSWORD or ~/.pgpass"))

    def __post_init__(self):
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise FieldError("name", f"{self.name!r}: use letters, digits, '-', '_' (no '/')")

    def storage_url(self) -> str:
        return self.storage or os.environ.get(STORAGE_ENV) or f"sqlite:///studies/{self.name}.db"

    def out_dir(self) -> Path:
        """studies/NAME/ beside a SQLite database (or under ./studies for a server storage): heatmaps, report."""
        db = sqlite_path(self.storage_url())
        return (db.parent if db is not None else Path("studies")) / self.name

    def artifacts(self) -> Path:
        """The FileSystemArtifactStore of the activation pictures."""
        return self.out_dir() / "artifacts"


def make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create {directory}: {e.strerror}; choose a writable place") from e
