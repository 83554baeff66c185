"""CPG on four facial tasks with SphereNet20 ("CNN20", experiment 3). One stage per invocation.

Usage (experiment3/FvGeEm_CPG_face.sh chains these; see docs/experiment3.md):
  python CPG_face_main.py --mode finetune --dataset gender --data_root data \
      --load_folder checkpoints/CPG/experiment3/spherenet20/face_verification/gradual_prune \
      --save_folder checkpoints/CPG/experiment3/spherenet20/gender/scratch

This file holds only experiment 3's data provider, flags and defaults; the flags, phases,
checkpoints, resume/replay and exit statuses are shared (utils/engine.py, utils/phases.py). The
verification task (--verification_task) gets the AngleLinear head and AngleLoss, and is
validated by the LFW protocol; every other task is a classification task.
"""
from utils import engine
from utils.face_dataset import FaceTasks

# The paper's experiment-3 settings (spec §9.1): plateau schedule with patience 10, best epoch,
# pruning stages keep only epochs above goal - margin, mask LR 5e-4, pruning every 100 batches.
# The per-task batch sizes, LRs and margins are set by experiment3/FvGeEm_CPG_face.sh.
DEFAULTS = dict(experiment=3, arch='spherenet20', data_root='data', num_classes=None, epochs=100,
                lr=5e-4, lr_mask=5e-4, batch_size=128, lr_schedule='plateau', patience=10, selection='goal',
                goal_margin=0.005, pruning_frequency=100, total_num_tasks=4,
                baseline_acc_file='logs/baseline_face_acc.txt')


def add_flags(parser):
    parser.add_argument('--image_size', type=int, default=112,
                        help='input size S (a multiple of 16; 112 in the paper), sets the flattened size')
    parser.add_argument('--pairs_file', default='face_data/lfw_pairs.txt',
                        help='LFW pairs file (header line, then "name i j" / "name1 i name2 j" lines)')
    parser.add_argument('--verification_task', default='face_verification',
                        help='the task with the AngleLinear head, validated on <data_root>/<task>/val (LFW)')
    parser.add_argument('--weighted_loss_tasks', nargs='*', default=['emotion'],
                        help='tasks trained with a class-weighted cross-entropy, weight (total - n_c) / n_c '
                             'from their training folders')
    parser.add_argument('--angle_lambda_restart', action='store_true',
                        help='restart AngleLoss\'s lambda schedule in every stage, as the original did '
                             '(default: one global step per task, carried across stages)')


def get_args_parser():
    return engine.get_args_parser('CPG_face_main.py', 'CPG on facial tasks (experiment 3)', DEFAULTS, add_flags)


def check_args(parser, args):
    engine.check_args(parser, args)
    if args.image_size < 16 or args.image_size % 16:
        parser.error(f'--image_size {args.image_size} must be a positive multiple of 16 (112 in the paper)')


def main(args):
    if args.dataset == args.verification_task:
        args.head = 'angle'   # SphereFace's AngleLinear (m = 4) + AngleLoss (spec §5.4)
        if args.mode in ('finetune', 'task') and not args.load_folder and not args.pretrained and not args.finetune_again:
            args.notes = [f'{args.dataset} is trained from scratch with AngleLoss: not the paper\'s '
                          'setting, which loads face_weight.pth (PRETRAINED_PATH) and only evaluates it']
    return engine.main(args, FaceTasks)


if __name__ == '__main__':
    engine.cli(get_args_parser, main, check_args)
