"""What the ``idap`` console script's commands share: the user-error type and argument types."""

import argparse


class PipelineError(ValueError):
    """A pipeline name or parameter the user gave is not valid."""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)
