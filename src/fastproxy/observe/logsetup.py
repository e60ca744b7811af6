"""Log lines for whoever reads them: journald, a log pipeline, or a terminal.

- Under systemd with stderr going to the journal ($JOURNAL_STREAM names stderr's device
  and inode): `<N>message`, N the syslog priority that journald reads from the prefix,
  and no time (the journal has its own).
- `--log-format json`: one JSON object a line: time, level, message (and the exception).
- Otherwise: ISO 8601 times in UTC with milliseconds, then the level and the message.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

FORMATS = ("text", "json")

# syslog priorities (sd-daemon(3)) by logging level
PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def _utc(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{_utc(record)} fastproxy {record.levelname} {_message(self, record)}"


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 6)
        # Each line is its own journal entry: keep the priority on every one.
        return "\n".join(
            f"<{priority}>{line}" for line in _message(self, record).splitlines() or [""]
        )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _utc(record), "level": record.levelname.lower()}
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _message(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + formatter.formatException(record.exc_info)
    return text


def to_journal() -> bool:
    """Whether stderr is the journal stream systemd connected us to."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (
        device.isdigit()
        and inode.isdigit()
        and (st.st_dev, st.st_ino)
        == (
            int(device),
            int(inode),
        )
    )


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif to_journal():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
