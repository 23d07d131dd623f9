"""Options and parameter types shared by several commands, bundled as decorators."""

from __future__ import annotations

from typing import Callable, Sequence

import click

from greenmaas.errors import ConfigError

__all__ = ["FORMATS", "ACCOUNTING_OPTIONS", "ledger_option", "format_option", "accounting_options", "DateParam"]

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


#: ``(option, AccountingConfig field, metavar, help)`` of the options that re-price a report.
ACCOUNTING_OPTIONS = (
    ("--location", "location", "SPEC",
     "Grid location: FR, FRA, US-CA, USA/virginia, CA-QC, CAN/quebec, CN-GD, SE3, gcp:europe-west1, "
     "aws:us-east-1, azure:westeurope, or a fixed number in gCO2e/kWh."),
    ("--price", "tariff", "TARIFF",
     "Electricity price: 0.25EUR/kWh, or time of use: 0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh[,tz=Europe/Paris] "
     "(first match wins; the last price is the default), or a tariff .json file."),
    ("--pue", "pue", "N", "Power usage effectiveness, a number >= 1.0; multiplies energy for carbon and cost."),
    ("--intensity-csv", "series", "FILE",
     "Time-varying grid intensity: a CSV with header timestamp,gco2_per_kwh (ISO times, naive = UTC); "
     "each value holds until the next."),
    ("--market-intensity", "market_intensity_g_per_kwh", "G_PER_KWH",
     "Market-based intensity in gCO2e/kWh (contracts, certificates), reported beside the location-based figure."),
    ("--hardware-price", "hardware_prices", "KIND=PRICE",
     "Hardware price per device-hour by device kind: gpu=2.50USD/h[,cpu=0.10USD/h]."),
    ("--embodied", "embodied", "KIND=KG/YEARS",
     "Embodied carbon per device by kind, for SCI: gpu=150kg/4y[,cpu=30kg/5y] (kgCO2e over a lifetime in years)."),
)


def accounting_options(fn: Callable) -> Callable:
    """The options of :data:`ACCOUNTING_OPTIONS`, each passed as its AccountingConfig field name
    (a string, or None when not given). Each replaces one setting; the others stay as recorded."""
    for option, dest, metavar, text in reversed(ACCOUNTING_OPTIONS):
        fn = click.option(option, dest, metavar=metavar, default=None, help=text)(fn)
    return fn


class UserError(click.ClickException):
    """Something the user can fix (a bad option, a missing or foreign ledger, a malformed file):
    one line on stderr, exit status 2 — the status click gives usage errors, so every error a
    user can cause ends the same way."""

    exit_code = 2


class DateParam(click.ParamType):
    """A ``YYYY-MM-DD`` date or ISO 8601 time, in UTC unless it says otherwise."""

    name = "DATE"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        from greenmaas.period import parse_date

        try:
            return parse_date(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
