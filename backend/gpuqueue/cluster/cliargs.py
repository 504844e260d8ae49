"""argparse types of the cluster commands' numbers: a value out of range is refused by name
(``argument --gpus: -1 is not 0 or more``) instead of running with it."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def number(kind: type, low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: ``kind`` (int or float) in [low, high] (``low_open``: above low)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if math.isnan(value) or value > high or value < low or (low_open and value == low):
            if high < math.inf:
                raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g}")
            raise argparse.ArgumentTypeError(f"{text} is not {'above' if low_open else 'at least'} {low:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


PORT = number(int, 1, 65535)
COUNT = number(int, 1)  # processes, threads
GPUS = number(int, 0)
SECONDS = number(float, 0, low_open=True)
SECONDS_OR_ZERO = number(float, 0)
