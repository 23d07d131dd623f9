"""Options and parameter types shared by several commands, bundled as decorators."""

from __future__ import annotations

from typing import Callable, Sequence

import click

from greenmaas.errors import ConfigError

__all__ = ["FORMATS", "ledger_option", "format_option", "DateParam"]

#: Output formats of the reporting commands.
FORMATS = ("table", "csv", "json", "markdown")


def ledger_option(fn: Callable) -> Callable:
    """``--ledger PATH_OR_URL``, passed to the command as ``ledger`` (None: the default ledger)."""
    return click.option(
        "--ledger",
        "ledger",
        metavar="PATH_OR_URL",
        default=None,
        help="Ledger file or SQLAlchemy URL [default: $GREENMAAS_LEDGER, else ./greenmaas.db].",
    )(fn)


def format_option(formats: Sequence[str] = FORMATS) -> Callable[[Callable], Callable]:
    """``--format``, passed to the command as ``fmt``."""

    def decorate(fn: Callable) -> Callable:
        return click.option(
            "--format",
            "fmt",
            type=click.Choice(list(formats)),
            default=formats[0],
            show_default=True,
            help="Output format.",
        )(fn)

    return decorate


class DateParam(click.ParamType):
    """A ``YYYY-MM-DD`` date or ISO 8601 time, in UTC unless it says otherwise."""

    name = "DATE"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        from greenmaas.report import parse_date

        try:
            return parse_date(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
