"""Structured logging: JSON in production, key=value in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


class _StderrLogger:
    """Writes each line to the ``sys.stderr`` of the moment (never a stream captured at start-up)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)  # noqa: T201

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


def _stderr_logger(*_: object) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
