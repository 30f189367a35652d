"""argparse ``type=`` callables shared by the subcommands, so a bad number gets the same
message (naming the option, through argparse) whichever command was typed."""

from __future__ import annotations

import argparse
from typing import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """A type that accepts whole numbers ``>= minimum``: ``--steps 0`` -> "must be >= 1, got 0"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"  # argparse names the type in some errors
    return parse
