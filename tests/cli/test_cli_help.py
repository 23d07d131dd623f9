"""Every command and every option says what it is for."""

from __future__ import annotations

import click

from greenmaas_cli.main import cli


def walk(command: click.Command, path: str = "greenmaas"):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, f"{path} {name}")


def test_every_command_and_option_has_help():
    missing = []
    for path, command in walk(cli):
        if not (command.help or command.short_help):
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{path} {param.opts[0]}")
    assert missing == []


def test_the_expected_commands_are_registered():
    assert {"devices", "runs", "report", "attribute", "export", "migrate"} <= set(cli.commands)


def test_every_ledger_command_takes_ledger():
    for name in ("devices", "runs", "report", "export", "migrate"):
        assert "--ledger" in [o for p in cli.commands[name].params for o in getattr(p, "opts", [])]
