"""Combine goal files of several finetune runs into one (the paper's fine-Avg / fine-Max goals).

Usage: python tools/combine_goal_files.py --mode max --out logs/finetune_max_cifar100_acc.txt \
           logs/finetune_cifar100_acc_*.txt
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import atomic_write_json  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.records import read_goals  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('combine goal files')
    parser.add_argument('files', nargs='+', help='goal files (JSON task -> "0.xxxx")')
    parser.add_argument('--mode', choices=['mean', 'max'], required=True, help='per-task mean or max')
    parser.add_argument('--out', required=True, help='combined goal file to write')
    return parser


def combine(goal_dicts, mode):
    """{task: "0.xxxx"} over the tasks present in every file, in the first file's order."""
    tasks = [t for t in goal_dicts[0] if all(t in g for g in goal_dicts)]
    pick = max if mode == 'max' else (lambda xs: sum(xs) / len(xs))
    return {t: f'{pick([g[t] for g in goal_dicts]):.4f}' for t in tasks}


def main(args):
    for path in args.files:
        if not os.path.isfile(path):
            raise CPGError(f'goal file not found: {path}; run experiment1/finetune_cifar100.sh first')
    combined = combine([read_goals(p) for p in args.files], args.mode)
    atomic_write_json(args.out, combined)
    print(f'{args.mode} of {len(args.files)} goal files ({len(combined)} tasks) -> {args.out}')
    print(json.dumps(combined))
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(get_args_parser().parse_args()))
    except CPGError as exc:
        sys.stderr.write(f'error: {exc}\n')
        sys.exit(1)
