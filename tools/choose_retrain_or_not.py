"""Keep the retrained model (re-learned pick mask) if retraining ever improved (spec §3.5).

Usage: python tools/choose_retrain_or_not.py --task_folder CKPT/<task>
retrain/checkpoint.pth.tar exists only if some epoch beat the pruned model's accuracy; it then
replaces gradual_prune/checkpoint.pth.tar (atomic copy). Otherwise the pruned model stays.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import CHECKPOINT_NAME, atomic_write_json, copy_checkpoint  # noqa: E402
from utils.logger import setup_logger  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('choose retrain or not')
    parser.add_argument('--task_folder', required=True, help='<checkpoint root>/<task> (holds retrain/, gradual_prune/)')
    parser.add_argument('--log_path', default=None, help='append the decision to this log')
    return parser


def main(args):
    logger = setup_logger(args.log_path, name='chooser')
    retrained = os.path.join(args.task_folder, 'retrain', CHECKPOINT_NAME)
    marker = os.path.join(args.task_folder, 'retrain', 'promoted.json')
    if os.path.isfile(marker):
        logger.info('retrain decision already taken (%s)', marker)
        return 0
    keep = os.path.isfile(retrained)
    if keep:
        copy_checkpoint(retrained, os.path.join(args.task_folder, 'gradual_prune', CHECKPOINT_NAME))
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    atomic_write_json(marker, {'retrained_model_kept': keep})
    logger.info('retrain %s', 'improved the task: retrained model kept' if keep else 'did not improve: pruned model kept')
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
