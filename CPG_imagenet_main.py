"""CPG on ImageNet and five fine-grained tasks with ResNet-50 (experiment 2). One stage per run.

Usage (experiment2/CPG_imagenet.sh chains these; see docs/experiment2.md):
  python CPG_imagenet_main.py --mode finetune --dataset cubs_cropped --data_root data \
      --load_folder checkpoints/CPG/experiment2/resnet50/imagenet/gradual_prune \
      --save_folder checkpoints/CPG/experiment2/resnet50/cubs_cropped/scratch

This file holds only experiment 2's data provider and defaults; the flags, phases, checkpoints,
resume/replay and exit statuses are shared with experiment 1 (utils/engine.py, utils/phases.py).
"""
from utils import engine
from utils.finegrained_dataset import FineGrainedTasks

# The paper's experiment-2 settings (spec §8.1): plateau schedule, best-epoch selection, a 0.5%
# goal margin, mask LR 1e-4, pruning every 50 batches; class counts come from the folders.
DEFAULTS = dict(experiment=2, arch='resnet50', data_root='data', num_classes=None, epochs=300, lr=1e-3,
                lr_mask=1e-4, lr_schedule='plateau', selection='best', goal_margin=0.005, pruning_frequency=50,
                total_num_tasks=6, baseline_acc_file='logs/baseline_imagenet_acc_resnet50.txt')


def add_flags(parser):
    parser.add_argument('--image_size', type=int, default=224,
                        help='input size S (train crops and test resize S*256/224 -> S; 224 in the paper)')


def get_args_parser():
    return engine.get_args_parser('CPG_imagenet_main.py', 'CPG on fine-grained tasks (experiment 2)',
                                  DEFAULTS, add_flags)


check_args = engine.check_args


def main(args):
    return engine.main(args, FineGrainedTasks)


if __name__ == '__main__':
    engine.cli(get_args_parser, main)
