"""Structured logging with a cold start that costs nothing.

``import structlog`` takes ~50 ms (it pulls in asyncio), which would double the start
time of ``myctr run``. :func:`get_logger` returns a proxy that checks the configured
level first and imports and configures structlog only when a record passes it.
:func:`configure` is called once by the CLI (``--log-level``, ``--log-format``).
"""

from __future__ import annotations

import sys
from typing import Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_settings: dict[str, Any] = {"level": "warning", "format": "auto", "configured": False}


def configure(level: str = "warning", fmt: str = "auto") -> None:
    """Set the level and ``console``/``json``/``auto`` (console on a TTY, else JSON)."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    _settings.update(level=level, format=fmt, configured=False)


def enabled(level: str) -> bool:
    return LEVELS[level] >= LEVELS[_settings["level"]]


def _structlog() -> Any:
    import structlog

    if not _settings["configured"]:
        fmt = _settings["format"]
        if fmt == "auto":
            fmt = "console" if sys.stderr.isatty() else "json"
        renderer: Any = (
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
            if fmt == "console"
            else structlog.processors.JSONRenderer()
        )
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(LEVELS[_settings["level"]]),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=False,
        )
        _settings["configured"] = True
    return structlog


class Logger:
    """A structlog-shaped logger that imports structlog only for records that pass."""

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self.name = name
        self.context = context or {}

    def bind(self, **context: Any) -> Logger:
        return Logger(self.name, {**self.context, **context})

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if enabled(level):
            logger = _structlog().get_logger(self.name).bind(logger=self.name, **self.context)
            getattr(logger, level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


def get_logger(name: str) -> Logger:
    return Logger(name)
