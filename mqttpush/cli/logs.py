"""How the long-running commands log: ``--log-format text|json`` and ``--log-level``
(docs/operations.md, "Logs").

``json`` writes one JSON object a line to stderr: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, then ``msg_id``, ``device_id``, ``task_id``, ``app_key`` where the call that logged
knew them (passed with ``extra=``), and ``exc_info`` for a traceback. Log shippers (Loki, Vector,
Elastic) read it without a parsing rule.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FIELDS = ("msg_id", "device_id", "task_id", "app_key")
"""Record attributes copied into a JSON line when a log call gave them with ``extra=``."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
NOISY = ("amqtt", "transitions")
"""Libraries held at WARNING or above whatever ``--log-level`` says."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            found = record.__dict__.get(name)
            if found is not None:
                doc[name] = found
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        elif record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure(level: str, fmt: str) -> None:
    """Send every log record of the process to stderr at ``level`` in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
