"""Argument parsing shared by the entry scripts."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 1.

    argparse's own exit status 2 would read as "widen the network" to the experiment scripts.
    """

    def error(self, message):
        sys.stderr.write(f'{self.prog}: error: {message} (see --help)\n')
        sys.exit(1)
