"""Usage errors in one line, with the flag or value a misspelt one most likely meant."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable, Sequence
from typing import NoReturn


def _key(word: str) -> str:
    """A word as it is compared: case, leading dashes, - and _ aside."""
    return word.lstrip("-").lower().replace("_", "").replace("-", "")


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known word nearest to word, or None when none is near enough."""
    by_key: dict[str, str] = {}
    for candidate in known:
        by_key.setdefault(_key(candidate), candidate)
    found = difflib.get_close_matches(_key(word), list(by_key), n=1)
    return by_key[found[0]] if found else None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """ "; did you mean X?" for the known word nearest to word, or "" when none is near."""
    match = closest(word, known)
    return f"; did you mean {match}?" if match else ""


def unrecognised(arguments: Sequence[str], flags: Iterable[str]) -> str:
    """The message for arguments no flag takes, each flag with the one it most likely meant."""
    flags = list(flags)
    named = []
    for argument in arguments:
        match = closest(argument.partition("=")[0], flags) if argument.startswith("-") else None
        named.append(f"{argument} (did you mean {match}?)" if match else argument)
    return f"unrecognised argument(s): {' '.join(named)}"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise `refusal` with one line instead of printing its
    usage and exiting, and which names the flag a misspelt one most likely meant."""

    refusal: type[Exception] = ValueError

    def error(self, message: str) -> NoReturn:
        raise self.refusal(message)

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        # Before argparse reads them: a misspelt flag would otherwise leave its value to be
        # read as a positional, or be hidden by a required flag that argparse misses first.
        unknown = [argument for argument in _flag_like(args) if not self._knows(argument)]
        if unknown:
            self.error(self._unrecognised(unknown))
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        namespace, rest = self.parse_known_args(args, namespace)
        if rest:
            self.error(self._unrecognised(rest))
        return namespace

    def _unrecognised(self, arguments: Sequence[str]) -> str:
        flags = [flag for flag in self._option_string_actions if flag.startswith("--")]
        return f"{unrecognised(arguments, flags)} (see {self.prog} --help)"

    def _knows(self, argument: str) -> bool:
        name = argument.partition("=")[0]
        if name in self._option_string_actions:
            return True
        return self.allow_abbrev and any(
            flag.startswith(name) for flag in self._option_string_actions
        )

    def _check_value(self, action: argparse.Action, value: object) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            choices = [str(choice) for choice in action.choices or ()]
            raise argparse.ArgumentError(
                action, error.message + did_you_mean(str(value), choices)
            ) from None


def _flag_like(args: Sequence[str]) -> list[str]:
    """The arguments argparse reads as long flags: --name or --name=value, before any --."""
    flags = []
    for argument in args:
        if argument == "--":
            break
        if argument.startswith("--") and " " not in argument.partition("=")[0]:
            flags.append(argument)
    return flags
