"""`serve`'s logs: text (uvicorn's look) or, with `--log-format json`, one JSON object per line.

A JSON line carries `time` (UTC, ISO 8601), `level`, `logger` and `message`; a guest's own log lines (the
`http_wasm_asgi.guest.<name>` loggers) add `guest`, an access log line adds `client`, `method`, `path`,
`http_version` and `status`, and a record with a traceback adds `exception`. The same formatter serves the
host's loggers (`http_wasm_asgi`), uvicorn's (through its `log_config`) and Hypercorn's.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

LOG_FORMATS: Final = ("text", "json")
HOST_LOGGER: Final = "http_wasm_asgi"
GUEST_LOGGER: Final = "http_wasm_asgi.guest."  # + the guest's name
_ACCESS_FIELDS: Final = ("client", "method", "path", "http_version", "status")  # uvicorn.access's args


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name.startswith(GUEST_LOGGER):
            entry["guest"] = record.name[len(GUEST_LOGGER):]
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            entry.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Guest `log` calls and WASI output go to the `http_wasm_asgi` loggers: show them on stderr, as text or
    JSON (one handler; set up again with another format, it is replaced)."""
    logger = logging.getLogger(HOST_LOGGER)
    formatter: logging.Formatter = (JsonFormatter() if log_format == "json"
                                    else logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    handler = next((h for h in logger.handlers if getattr(h, "http_wasm_asgi", False)), None)
    if handler is None:
        if logger.handlers:  # someone else's handler (an embedding program's): leave it be
            logger.setLevel(_level(level))
            return
        handler = logging.StreamHandler()
        handler.http_wasm_asgi = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(formatter)
    logger.setLevel(_level(level))


def _level(level: str) -> int | str:
    return 5 if level.lower() == "trace" else level.upper()


def json_log_config() -> dict[str, Any]:
    """uvicorn's `log_config` for JSON lines: its loggers as in its default config (errors on stderr, the
    access log on stdout), each line formatted by `JsonFormatter`."""
    formatter = {"()": f"{__name__}.JsonFormatter"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": formatter},
        "handlers": {
            "default": {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
            "access": {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def json_logger(name: str, level: int | str, stream: Any = None) -> logging.Logger:
    """A logger writing JSON lines to `stream` (default stderr): what Hypercorn is given for its logs."""
    logger = logging.getLogger(name)
    logger.setLevel(level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers = [handler]
    logger.propagate = False
    return logger
