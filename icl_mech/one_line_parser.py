"""The command line's argument parser: a usage error is one line and exit status 2, like every
other bad input (argparse prints its usage block first)."""

from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (and its sub-commands' errors) are one line."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


__all__ = ["OneLineParser"]
