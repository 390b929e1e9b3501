"""The argument parser of `sam3` and of every subcommand: a usage error suggests what was probably meant.

`sam3 encode photos/ --sever HOST:PORT` says "did you mean --server?" under `sam3 encode`'s own usage,
and `sam3 helth` says "did you mean 'health'?". Python 3.14's `suggest_on_error` covers only the
second, and the project supports 3.11, so it is done here, once: subparsers are made with the class of
their parent parser, so every subcommand gets it by being added.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

_REQUIRED = "the following arguments are required"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that rejects unknown flags itself (so the message shows its own usage, not the
    top-level one) and adds "did you mean ...?" to unknown flags and invalid choices."""

    _given: list[str]

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # a subcommand's leftovers would otherwise reach the top-level parser and its usage
            self.error(self._unrecognized(extras))
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        # `--imgae x.jpg` also leaves --image missing: the typo is the error worth reporting.
        unknown = self._unknown_flags(getattr(self, "_given", []))
        if unknown and message.startswith(_REQUIRED):
            message = self._unrecognized(unknown)
        super().error(message)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)  # type: ignore[misc]
        except argparse.ArgumentError as error:
            choices = [str(choice) for choice in action.choices or ()]
            closest = difflib.get_close_matches(str(value), choices, n=1)
            if not closest or "you meant" in error.message:  # Python 3.14+ may have suggested it already
                raise
            raise argparse.ArgumentError(action, f"{error.message}; did you mean {closest[0]!r}?") from None

    def _unrecognized(self, extras: Sequence[str]) -> str:
        message = f"unrecognized arguments: {' '.join(extras)}"
        flags = [option for option in self._option_string_actions if option.startswith("--")]
        hints = {flag: difflib.get_close_matches(flag, flags, n=1) for flag in self._unknown_flags(extras)}
        meant = {flag: closest[0] for flag, closest in hints.items() if closest}
        if len(meant) == 1:
            return f"{message}; did you mean {next(iter(meant.values()))}?"
        if meant:
            return f"{message}; did you mean {', '.join(f'{hint} for {flag}' for flag, hint in meant.items())}?"
        return message

    def _unknown_flags(self, arguments: Sequence[str]) -> list[str]:
        """The tokens that look like flags of this parser and are none of them (nor a prefix of one)."""
        known = self._option_string_actions
        unknown = []
        for argument in arguments:
            if argument == "--":
                break
            flag = argument.split("=", 1)[0]
            if not flag.startswith("-") or len(flag) < 2 or flag[1].isdigit() or flag[1] == ".":
                continue  # a value, "-" (stdin) or a negative number
            if flag.startswith("--"):
                if not any(option.startswith(flag) for option in known):  # argparse accepts unique prefixes
                    unknown.append(flag)
            elif flag[:2] not in known:  # -j2, -ifile.jpg: a short flag with its value attached
                unknown.append(flag)
        return unknown
