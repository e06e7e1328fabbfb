"""No password leaves the process: storage URLs are shown masked, and everything the command line
prints passes one filter that masks any password it still finds.

`mask_url` is for messages built from a URL (the SQLAlchemy way: `user:***@host`). `redact` is the
filter: it masks the password of every URL in a text (`scheme://user:PASSWORD@`, and a
`password=` query parameter) and every secret `remember`ed so far (the password of each storage URL
this process opened, and libpq's `PGPASSWORD`), wherever it appears. `RedactingStream` puts `redact`
in front of stdout and stderr, so tracebacks, log lines and progress bars are covered as well.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading

from sqlalchemy.engine import make_url

MASK = "***"
# Shorter secrets are masked inside URLs (by the pattern) but not as bare words: masking every
# "ab" in a message would make it unreadable and hide nothing a URL does not already cover.
MIN_BARE_SECRET = 4
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<at>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&\s]*)", re.IGNORECASE)

_secrets: set[str] = set()
_lock = threading.Lock()


def remember(url: str | None) -> None:
    """Mask this URL's password (and PGPASSWORD) wherever it appears in text `redact` sees later."""
    candidates = [os.environ.get("PGPASSWORD")]
    if url:
        try:
            candidates.append(make_url(url).password)
        except Exception:  # an unparseable URL: the patterns still mask its password
            pass
    with _lock:
        _secrets.update(s for s in candidates if s and len(s) >= MIN_BARE_SECRET)


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***, e.g. postgresql+psycopg2://alice:***@db/initstudy."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return redact(url)


def redact(text: str) -> str:
    """`text` with every password in it masked (see the module docstring)."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + (MASK if m["password"] else "") + m["at"], text)
    text = _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactingStream(io.TextIOBase):
    """A text stream that writes `redact(text)` to the stream it wraps (stdout or stderr)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return self._stream.encoding

    def __getattr__(self, name):  # anything else a library asks of the real stream
        return getattr(self._stream, name)


def guard_output() -> None:
    """Route sys.stdout and sys.stderr through `redact` for the rest of the process."""
    remember(None)  # PGPASSWORD
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
