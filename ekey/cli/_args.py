# -*- test-case-name: tests.test_cli_egd -*-
"""
What every ekey command line shares.
"""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line on standard error
    (C{PROG: error: MESSAGE}), with no usage dump, and exit status 2.
    """

    def error(self, message: str):
        """
        Print C{message} as one line and exit with status 2.

        @raise SystemExit: always.
        """
        fail(message, self.prog)


def fail(message: str, prog: str, status: int = 2):
    """
    Print C{PROG: error: MESSAGE} on standard error and exit.

    @param status: the exit status.
    @raise SystemExit: always.
    """
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)
