"""``greenmaas migrate``: upgrade a ledger written by an older greenmaas, in place."""

from __future__ import annotations

import click

from .options import ledger_option

__all__ = ["migrate"]


@click.command("migrate")
@ledger_option
def migrate(ledger):
    """Upgrade a ledger written by an older greenmaas to this version's schema, in place.

    A SQLite file is first copied to <name>.schema<N>.bak beside it (opening it for writing
    does the same on its own). A server database (PostgreSQL) is never upgraded on its own and
    is not copied here: back it up with its own tools first. An up-to-date ledger is left as is.
    """
    from greenmaas.ledger.migrations import migrate as upgrade_ledger

    done = upgrade_ledger(ledger)
    if not done.done:
        click.echo(f"{done.ledger} is up to date (schema version {done.to_version}); nothing to do.")
        return
    backup = f"; the old ledger is kept as {done.backup}" if done.backup else ""
    click.echo(f"Upgraded {done.ledger} from schema version {done.from_version} to {done.to_version}{backup}.")
