"""Keep the retrained model (re-learned pick mask) only if retraining improved (spec §3.5).

Usage: python tools/choose_retrain_or_not.py --task_folder CKPT/<task>

retrain/result.json says whether some retrain epoch beat the pruned model's accuracy
(`improved`); only then does retrain/checkpoint.pth.tar replace gradual_prune/checkpoint.pth.tar
(atomic copy, skipped when already in place). A retrain checkpoint without an improving result
(left by an interrupted or differently configured attempt) is never promoted. The decision is
recorded in retrain/promoted.json; running the tool again gives the same result.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import CHECKPOINT_NAME, atomic_write_json, copy_checkpoint  # noqa: E402
from utils.cli import run_tool  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.logger import setup_logger  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('choose retrain or not')
    parser.add_argument('--task_folder', required=True, help='<checkpoint root>/<task> (holds retrain/, gradual_prune/)')
    parser.add_argument('--log_path', default=None, help='append the decision to this log')
    return parser


def read_result(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CPGError(f'no retrain result at {path}; run the retrain (--finetune_again) first') from None
    except (OSError, ValueError):
        raise CPGError(f'cannot read {path}; delete it and rerun the retrain') from None


def main(args):
    logger = setup_logger(args.log_path, name='chooser')
    retrain_dir = os.path.join(args.task_folder, 'retrain')
    result = read_result(os.path.join(retrain_dir, 'result.json'))
    keep = bool(result.get('improved'))
    retrained = os.path.join(retrain_dir, CHECKPOINT_NAME)
    if keep:
        if not os.path.isfile(retrained):
            raise CPGError(f'{retrain_dir}/result.json says the retrain improved but {retrained} is '
                           f'missing; delete result.json and rerun the retrain')
        copy_checkpoint(retrained, os.path.join(args.task_folder, 'gradual_prune', CHECKPOINT_NAME))
    atomic_write_json(os.path.join(retrain_dir, 'promoted.json'),
                      {'retrained_model_kept': keep, 'accuracy': result.get('accuracy')})
    logger.info('retrain %s', 'improved the task: retrained model kept' if keep
                else 'did not improve: pruned model kept')
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
