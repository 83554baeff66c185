"""CPG on CIFAR-100 super-class tasks with VGG16-BN (experiment 1). One stage per invocation.

Usage (experiment1/*.sh chain these; see docs/files.md "Exit codes"):
  python CPG_cifar100_main.py --mode finetune --dataset aquatic_mammals \
      --save_folder checkpoints/CPG/experiment1/scratch_mul_1.5/custom_vgg_cifar100/aquatic_mammals/scratch

This file holds only experiment 1's data provider and defaults; the flags, phases, checkpoints,
resume/replay and exit statuses are shared (utils/engine.py, utils/phases.py).
"""
from utils import engine
from utils.cifar100_dataset import CifarTasks

# The paper's experiment-1 settings (spec §3.1, §3.8, §7.1).
DEFAULTS = dict(experiment=1, arch='custom_vgg_cifar100', data_root='data/cifar100_org', num_classes=5,
                epochs=100, lr=1e-2, lr_mask=5e-4, lr_schedule='milestones', selection='last', goal_margin=0.0,
                pruning_frequency=10, total_num_tasks=20, baseline_acc_file='logs/baseline_cifar100_acc.txt')


def get_args_parser():
    return engine.get_args_parser('CPG_cifar100_main.py', 'CPG on CIFAR-100 (experiment 1)', DEFAULTS)


check_args = engine.check_args


def main(args):
    return engine.main(args, CifarTasks)


if __name__ == '__main__':
    engine.cli(get_args_parser, main)
