"""The README stays true: its first screen's two commands exist, and every worker flag is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sam3_cli.main import build_parser
from sam3_cli.options import env_name

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def worker_options() -> dict[str, argparse.Action]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {}
    for name in ("serve", "encoder", "decoder"):
        for action in commands.choices[name]._actions:
            if action.option_strings and action.dest not in ("help", "debug"):
                options[max(action.option_strings, key=len)] = action
    return options


def test_first_screen_gives_the_two_commands_and_they_exist() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make serve" in first_screen and "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_worker_flag_and_its_environment_variable_is_documented() -> None:
    for flag, action in worker_options().items():
        assert f"`{flag}`" in README, f"{flag} missing from the README's configuration table"
        if "[env " in (action.help or ""):
            assert f"`{env_name(flag)}`" in README, f"{env_name(flag)} missing from the README"


def test_documented_flags_exist() -> None:
    table = README.split("## Configuration", 1)[1].split("## Where", 1)[0]
    documented = set(re.findall(r"^\| `(--[a-z-]+)`", table, re.M))
    assert documented == set(worker_options())
