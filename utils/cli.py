"""Argument parsing and the exit-status file shared by the entry scripts."""
import argparse
import os
import sys

EXIT_STATUS_NAME = 'exit_status'


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 1.

    argparse's own exit status 2 would read as "widen the network" to the experiment scripts.
    """

    def error(self, message):
        sys.stderr.write(f'{self.prog}: error: {message} (see --help)\n')
        sys.exit(1)


def write_exit_status(save_folder, status):
    """<save_folder>/exit_status holds the stage's status for the bash loop.

    torchrun reports every failing child as its own exit 1, which would turn "widen" (2) or "stop
    pruning" (6) into an error; the scripts read this file instead (experiment1/common.sh, stage).
    """
    from .atomic import atomic_write
    os.makedirs(save_folder, exist_ok=True)
    atomic_write(os.path.join(save_folder, EXIT_STATUS_NAME), lambda f: f.write(f'{status}\n'.encode()))


def run_tool(main, parser):
    """The `__main__` block of a tool: one 'error: ...' line on stderr and exit 1 for a CPGError,
    exit 3 when the goal file is missing (the experiment scripts' protocol)."""
    from .errors import CPGError
    from .records import GoalFileMissing
    try:
        sys.exit(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.stderr.write('interrupted\n')
        sys.exit(130)
    except GoalFileMissing as exc:
        sys.stderr.write(f'error: {exc}\n')
        sys.exit(3)
    except CPGError as exc:
        sys.stderr.write(f'error: {exc}\n')
        sys.exit(1)
