"""Keep the retrained model (re-learned pick mask) only if retraining improved (spec §3.5).

Usage: python tools/choose_retrain_or_not.py --task_folder CKPT/<task>

retrain/result.json says whether some retrain epoch beat the pruned model's accuracy
(`improved`); only then does retrain/checkpoint.pth.tar replace gradual_prune/checkpoint.pth.tar
(atomic copy, skipped when already in place). A retrain checkpoint without an improving result
(left by an interrupted or differently configured attempt) is never promoted. The decision is
recorded in retrain/promoted.json; running the tool again gives the same result.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_tool  # noqa: E402
from utils.logger import setup_logger  # noqa: E402
from utils.ratio_choice import keep_retrain_if_improved  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('choose retrain or not')
    parser.add_argument('--task_folder', required=True, help='<checkpoint root>/<task> (holds retrain/, gradual_prune/)')
    parser.add_argument('--log_path', default=None, help='append the decision to this log')
    return parser


def main(args):
    logger = setup_logger(args.log_path, name='chooser')
    keep = keep_retrain_if_improved(args.task_folder)
    logger.info('retrain %s', 'improved the task: retrained model kept' if keep
                else 'did not improve: pruned model kept')
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
