"""What every command shares: the parser with the logging options, and the logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys

LOG_LEVELS = ("debug", "info", "warning", "error")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (except None and booleans' False) and keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_logging_options(parser: argparse.ArgumentParser, default: str = "info") -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="store_true", help="log debug messages (--log-level debug)")
    group.add_argument("--log-level", choices=LOG_LEVELS, default=default, help="messages from this level up")


def make_parser(
    prog: str, description: str | None = None, logging_options: bool = True, **kwargs
) -> argparse.ArgumentParser:
    """An argparse parser for ``asr <prog>`` with the logging options every command takes. A command with
    subcommands passes ``logging_options=False`` and adds them to each subcommand's parser instead, so
    that they go after the subcommand's name like its other options."""
    parser = argparse.ArgumentParser(
        prog=f"asr {prog}", description=description, formatter_class=HelpFormatter, **kwargs
    )
    if logging_options:
        add_logging_options(parser)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (tests and callers may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(args: argparse.Namespace) -> None:
    """One format for every command, on stderr, at the level the options give. Handlers others installed
    (a caller's, pytest's) are kept; ours is added once."""
    level = "debug" if getattr(args, "verbose", False) else getattr(args, "log_level", "info")
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and set up logging from it."""
    args = parser.parse_args(argv)
    setup_logging(args)
    return args
