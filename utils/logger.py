"""Logging to stdout and a task log file, plus the self-describing run header (args, git SHA)."""
import json
import logging
import os
import subprocess
import sys


def setup_logger(log_path=None, name='CPG'):
    """Logger with the original's `time - name - level - message` format, to stdout and log_path."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter('%(asctime)s - %(name)s - %(levelname)s - %(message)s')
    handlers = [logging.StreamHandler(sys.stdout)]
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        handlers.append(logging.FileHandler(log_path))
    for handler in handlers:
        handler.setFormatter(fmt)
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
    logger.info('git %s | %s', git_sha(), ' '.join(sys.argv))
    logger.info('args: %s', json.dumps(dict(sorted(vars(args).items())), default=str))


def append_jsonl(path, obj):
    """One JSON line per epoch (mae's log.txt habit)."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'a') as f:
            f.write(json.dumps(obj) + '\n')
