"""``greenmaas migrate``: upgrade a ledger written by an older greenmaas, in place (Alembic
revisions shipped with the package; see :mod:`greenmaas.ledger.migrations`)."""

from __future__ import annotations

import click

from .options import ledger_option
from .render import progress_steps

__all__ = ["migrate"]


@click.command("migrate")
@ledger_option
def migrate(ledger):
    """Upgrade a ledger written by an older greenmaas to this version's schema, in place.

    A SQLite file is first copied to <name>.schema<N>.bak beside it, file mode kept (opening it
    for writing does the same on its own unless GREENMAAS_AUTO_UPGRADE=0). A server database
    (PostgreSQL) is upgraded only here (or with GREENMAAS_AUTO_UPGRADE=1) and is not copied:
    back it up with its own tools first. The upgrade runs in one transaction: it is done
    completely or not at all. An up-to-date ledger is left as is; a newer one is refused.
    """
    from greenmaas.ledger.migrations import migrate as upgrade_ledger

    with progress_steps("greenmaas migrate", ("upgrading",)) as step:
        step("upgrading")
        done = upgrade_ledger(ledger)
    if not done.done:
        click.echo(f"{done.ledger} is up to date (schema version {done.to_version}); nothing to do.")
        return
    backup = f"; the old ledger is kept as {done.backup}" if done.backup else ""
    click.echo(f"Upgraded {done.ledger} from schema version {done.from_version} to {done.to_version}{backup}.")
