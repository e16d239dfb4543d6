"""The gateway's log: text or JSON lines (``logging.format``, ``--log-format``), written
by a thread of their own so that no request waits on a slow terminal or pipe, and a
line per finished request (``logging.request_lines``).

A request line's fields, in JSON as in ``extra`` of the record: ``request_id``,
``key`` (its name, else its id), ``requested_model``, ``model``, ``deployment``,
``status``, ``duration_ms``, ``ttfb_ms``, ``input_tokens``, ``output_tokens``,
``cost_usd``, ``error`` (its kind). Every JSON line has ``time`` (ISO 8601, UTC),
``level``, ``logger`` and ``message``.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

REQUESTS = logging.getLogger("lmgate")  # request lines go through its redaction too
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup(level: str, form: str) -> None:
    """Every record of the process to stderr, as ``form`` (text | json), through a
    queue: the event loop only enqueues."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(_TEXT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(_Enqueue(records))
    root.setLevel(getattr(logging, level.upper()))
    listener.start()
    atexit.register(listener.stop)  # what is queued is written before the process ends


class _Enqueue(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatted here (the message, with its arguments and redaction already done),
        # not by the writer thread; the request fields stay for the JSON formatter.
        record.msg, record.args = record.getMessage(), ()
        return record


def request_line(fields: dict[str, Any]) -> None:
    """One finished request, at INFO (the caller checked the level)."""
    tokens = f"{fields['input_tokens']}/{fields['output_tokens']}"
    cost = fields["cost_usd"]
    REQUESTS.info(
        "request %s key=%s %s -> %s %s status=%d %.0fms ttfb=%s tokens=%s%s%s",
        fields["request_id"],
        fields["key"] or "-",
        fields["requested_model"] or "-",
        fields["model"] or "-",
        fields["deployment"] or "-",
        fields["status"],
        fields["duration_ms"],
        f"{fields['ttfb_ms']:.0f}ms" if fields["ttfb_ms"] is not None else "-",
        tokens,
        f" cost=${cost:.6f}" if cost is not None else "",
        f" error={fields['error']}" if fields["error"] else "",
        extra={"request": fields},
    )
