"""Logging to stdout and a task log file, plus the self-describing run header (args, git SHA)."""
import json
import logging
import os
import subprocess
import sys


class _BelowError(logging.Filter):
    """The terminal's stdout: below errors, and not the records meant for the log file only
    (logger.info(..., extra=FILE_ONLY): a run's whole argument list)."""

    def filter(self, record):
        return record.levelno < logging.ERROR and not getattr(record, 'file_only', False)


FILE_ONLY = {'file_only': True}


class _QuietFileHandler(logging.FileHandler):
    """A log file that cannot be written (a full disk) prints no traceback per line: the stage's
    next checkpoint write reports the problem, in one line."""

    def handleError(self, record):
        pass


def setup_logger(log_path=None, name='CPG', verbose=False):
    """Logger to stdout (`HH:MM:SS message`; verbose: the log file's format) and to log_path in the
    original's `time - name - level - message` format.

    Errors go to stderr instead of stdout, as the single line `error: <message>` (what to do is in
    the message), and to the log file in the usual format.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter('%(asctime)s - %(name)s - %(levelname)s - %(message)s')
    stdout = logging.StreamHandler(sys.stdout)
    stdout.addFilter(_BelowError())
    stdout.setFormatter(fmt if verbose else logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.ERROR)
    stderr.setFormatter(logging.Formatter('error: %(message)s'))
    handlers = [stdout, stderr]
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        handlers.append(_QuietFileHandler(log_path))
        handlers[-1].setFormatter(fmt)
    for handler in handlers:
        logger.addHandler(handler)
    return logger


def git_sha():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def log_run_header(logger, args):
    """The git SHA, the command line and every argument: to the log file (also to the terminal
    with --verbose / VERBOSE=1)."""
    quiet = None if getattr(args, 'verbose', False) else FILE_ONLY
    logger.info('git %s | %s', git_sha(), ' '.join(sys.argv), extra=quiet)
    logger.info('args: %s', json.dumps(dict(sorted(vars(args).items())), default=str), extra=quiet)


def append_jsonl(path, obj):
    """One JSON line per epoch (mae's log.txt habit)."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'a') as f:
            f.write(json.dumps(obj) + '\n')
