"""Every subcommand of ``nimbus`` explains itself: a description, and help for each option."""

from __future__ import annotations

import argparse

import pytest

from engine import cli


def _subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub, helps.get(name)
                yield from _subcommands(sub, f"{prefix}{name} ")


SUBCOMMANDS = list(_subcommands(cli._parser()))


@pytest.mark.parametrize(("name", "sub", "summary"), SUBCOMMANDS, ids=[s[0] for s in SUBCOMMANDS])
def test_subcommand_and_each_option_have_help(name, sub, summary):
    assert summary or sub.description, f"nimbus {name} has no description"
    missing = [
        a.option_strings or [a.dest]
        for a in sub._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert missing == [], f"nimbus {name}: options without help: {missing}"


def test_validate_and_mta_name_the_policy_directory_alike():
    parser = cli._parser()
    for argv in (["validate", "--policy-dir", "p"], ["mta", "--policy-dir", "p"]):
        assert parser.parse_args(argv).policy_dir == "p"
    assert parser.parse_args(["validate", "--policy", "p"]).policy_dir == "p"  # old spelling
