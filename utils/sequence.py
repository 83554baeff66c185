"""One task of a continual sequence in ONE process (--mode task; spec §3.9, §8.1, §9.1).

The experiment scripts loop over the tasks and start one process per task; this module runs the
task's stages in order, with the model, the decoded data and the loader workers kept in memory
from one stage to the next:

  1. Phase A (<task>/scratch), retried --width_step wider while it misses its goal below the
     maximum width (exit 2); <task>/width holds the width of the current attempt;
  2. the pruning stages 0 -> r1 -> r2 ... (<task>/gradual_prune/<r>), until one stops the
     loop (exit 6: train-accuracy gate, goal floor or must-prune rule);
  3. the pick: --pick auto applies experiment 1's rule (a choice made before, e.g. by hand, is
     kept), hand stops for tools/pick_pruning_ratio.py (experiments 2 and 3, TARGET_TASK_ID=N),
     last keeps the last stage (PackNet, and the chains without pruning);
  4. the retrain of the pick mask (<task>/retrain, --retrain_epochs > 0, tasks >= 2 that pick),
     kept only if it improves.

The methods are configurations of this sequence: PAE is CPG without picking or retrain; PackNet
is one pruning stage that prunes at once (--pruning_interval 0) and retrains; Piggyback and
ProgressiveNet run Phase A only (no --pruning_ratios).

Every stage keeps its folder, result.json, replay signature and resume file, and its args are
exactly those of the single-stage mode (--mode finetune|prune), so the two modes replay each
other's stages. A rerun after kill -9 replays the finished stages without training or loading
them, and resumes the interrupted one from its resume state.
"""
import argparse
import json
import os

from .checkpoint import atomic_write, checkpoint_info
from .context import EXIT_NO_CAPACITY, EXIT_OK, EXIT_STOP_PRUNING, EXIT_WIDEN, ModelCache, PhaseContext
from .errors import CPGError
from .phases import run_finetune, run_prune, run_retrain
from .ratio_choice import (check_required, choose_ratio, chosen_source, is_at_max_width, keep_retrain_if_improved,
                           promote, read_choice, record_report, required_sparsity)
from .recipes import train_acc_gate
from .records import ratio_key, read_goal, read_record

PICKS = ('auto', 'hand', 'last')


def add_task_flags(parser):
    """The flags of --mode task: the stages after Phase A and how the task's model is picked.
    Phase A itself takes the usual flags (--epochs, --lr, --lr_mask, ...)."""
    parser.add_argument('--task_folder', default=None,
                        help='task mode: <checkpoint root>/<task>, where its stage folders go')
    parser.add_argument('--width_step', type=float, default=0.5,
                        help='task mode: Phase A is retried this much wider while it misses its goal below '
                             '--max_allowed_network_width_multiplier (0: never wider)')
    parser.add_argument('--pruning_ratios', nargs='*', default=[],
                        help='task mode: target sparsity of each pruning stage, in order (none: no pruning)')
    parser.add_argument('--prune_epochs', type=int, default=None,
                        help='task mode: epochs of each pruning stage (default: --epochs)')
    parser.add_argument('--prune_lr', type=float, default=None,
                        help='task mode: SGD learning rate of the pruning stages (default: --lr)')
    parser.add_argument('--prune_train_acc_gate', type=train_acc_gate, default=None,
                        help='task mode: --train_acc_gate of the pruning stages (default: --train_acc_gate)')
    parser.add_argument('--pick', choices=PICKS, default='auto',
                        help='task mode: auto = experiment 1\'s rule (a choice made before is kept); hand = '
                             'stop for tools/pick_pruning_ratio.py; last = keep the last saved stage')
    parser.add_argument('--allow_acc_loss', type=float, default=None,
                        help='task mode, --pick auto: accuracy a stage may miss the goal by (default: '
                             '--goal_margin, the tolerance Phase A and the pruning stages accept)')
    parser.add_argument('--retrain_epochs', type=int, default=0,
                        help='task mode: epochs of the pick mask\'s retrain after the pick (0: no retrain)')
    parser.add_argument('--retrain_lr', type=float, default=1e-3, help='task mode: retrain SGD learning rate')
    parser.add_argument('--retrain_lr_mask', type=float, default=1e-4, help='task mode: retrain Adam mask LR')


def check_task_args(parser, args):
    if not args.dataset or not args.task_folder:
        parser.error('--mode task needs --dataset TASK and --task_folder <checkpoint root>/<task>')
    for ratio in args.pruning_ratios:
        try:
            value = float(ratio)
        except ValueError:
            value = -1.0
        if not 0.0 < value < 1.0:
            parser.error(f'--pruning_ratios: {ratio!r} is not a sparsity in (0, 1) (PRUNING_RATIOS)')
    if [float(r) for r in args.pruning_ratios] != sorted(set(float(r) for r in args.pruning_ratios)):
        parser.error(f'--pruning_ratios {" ".join(args.pruning_ratios)}: give increasing sparsities (PRUNING_RATIOS)')
    if args.width_step < 0:
        parser.error(f'--width_step {args.width_step} must be >= 0 (WIDTH_STEP)')
    if args.width_step == 0:   # never wider: the start width is the task's maximum (Phase A would
        # otherwise answer "widen" below the maximum and be retried at the same width forever)
        args.max_allowed_network_width_multiplier = min(args.max_allowed_network_width_multiplier,
                                                        args.network_width_multiplier)
    if args.allow_acc_loss is None:   # a stage accepted within the goal margin can be picked
        args.allow_acc_loss = args.goal_margin
    if not 0.0 <= args.allow_acc_loss < 1.0:
        parser.error(f'--allow_acc_loss {args.allow_acc_loss} (ALLOW_ACC_LOSS): a fraction in [0, 1) is expected')


class TaskRunner:
    """The stages of one task (this module's docstring), sharing data, device and models."""

    def __init__(self, args, data, logger, device, dist=None):
        self.args, self.data, self.logger, self.device, self.dist = args, data, logger, device, dist
        self.folder = args.task_folder
        self.models = ModelCache()   # the model the last stage saved, for the next one
        self.record_file = os.path.join(self.folder, 'gradual_prune', 'record.txt')
        self.stopped = None   # the pruning stage that ended the loop (exit 6), if one did
        self.log_path = args.log_path or os.path.join(self.folder, 'train.log')

    # ----- stages ------------------------------------------------------------------------------
    def stage_args(self, mode, save, **changes):
        """The args the single-stage mode would get for this stage: the task's, changed."""
        stage = argparse.Namespace(**vars(self.args))
        stage.mode = mode
        stage.save_folder = os.path.join(self.folder, save)
        stage.log_path = self.log_path
        stage.finetune_again = False
        for key, value in changes.items():
            setattr(stage, key, value)
        return stage

    def stage(self, run, mode, save, **changes):
        """Run one stage (run_finetune, run_prune or run_retrain) in this process; its status."""
        args = self.stage_args(mode, save, **changes)
        what = {'prune': f'pruning {args.initial_sparsity} -> {args.target_sparsity}',
                'finetune': 'retrain of the pick mask' if args.finetune_again else
                            f'Phase A at width {args.network_width_multiplier}'}[mode]
        self.logger.info('=== %s: %s', args.dataset, what)
        return run(PhaseContext(args, self.data, self.logger, self.device, self.dist, models=self.models))

    def phase_a(self):
        """Phase A, widened and retried while it misses its goal below the maximum width."""
        a = self.args
        width = max(a.network_width_multiplier, self.stored_width())
        if a.load_folder:   # the network is never narrower than the model the task starts from
            width = max(width, checkpoint_info(a.load_folder, 'finish the previous task first')
                        ['network_width_multiplier'])
        while True:
            if self.dist is None or self.dist.is_main:
                os.makedirs(self.folder, exist_ok=True)
                atomic_write(os.path.join(self.folder, 'width'), lambda f: f.write(f'{width}\n'.encode()))
            status = self.stage(run_finetune, 'finetune', 'scratch', network_width_multiplier=width,
                                pruning_ratio_to_acc_record_file=self.record_file)
            if status != EXIT_WIDEN:
                return status
            width = round(min(width + a.width_step, a.max_allowed_network_width_multiplier), 6)
            self.logger.info('=== %s: goal missed, growing the network to width multiplier %s', a.dataset, width)

    def stored_width(self):
        """<task>/width: the width of the attempt a killed run was at (0 if none)."""
        try:
            with open(os.path.join(self.folder, 'width')) as f:
                return float(f.read().strip())
        except (OSError, ValueError):
            return 0.0

    def prune_changes(self, ratio, initial, load):
        """What a pruning stage changes in the task's args: its sparsities, input, epochs, LR, gate."""
        a = self.args
        return dict(load_folder=load, initial_sparsity=initial, target_sparsity=float(ratio), lr_mask=0.0,
                    epochs=a.epochs if a.prune_epochs is None else a.prune_epochs,
                    lr=a.lr if a.prune_lr is None else a.prune_lr,
                    train_acc_gate=a.train_acc_gate if a.prune_train_acc_gate is None else a.prune_train_acc_gate,
                    pruning_ratio_to_acc_record_file=self.record_file)

    def pruning_stages(self):
        """The stages 0 -> r1 -> r2 ..., each from the one before; exit 6 ends them."""
        initial, load = 0.0, os.path.join(self.folder, 'scratch')
        for ratio in self.args.pruning_ratios:
            save = os.path.join('gradual_prune', ratio)
            status = self.stage(run_prune, 'prune', save, **self.prune_changes(ratio, initial, load))
            if status == EXIT_STOP_PRUNING:
                self.stopped = save
                return
            initial, load = float(ratio), os.path.join(self.folder, save)

    def on_main(self, work):
        """work() on rank 0 alone (it reads what the stages wrote and writes the task's files),
        after every rank ended the stages before it; then every rank goes on from those files.
        An error there stops every rank, with the same line."""
        if self.dist is None:
            return work()
        import torch.distributed
        self.dist.barrier()   # rank 0's records of the last stage are written
        error = [None]
        if self.dist.is_main:
            try:
                work()
            except CPGError as exc:
                error = [str(exc)]
        torch.distributed.broadcast_object_list(error, src=0)
        if error[0] is not None:
            raise CPGError(error[0])
        return None

    # ----- the pick --------------------------------------------------------------------------------
    def picked(self):
        """The task's model is in <task>/gradual_prune/ (chosen.json); else it waits for a pick."""
        return read_choice(self.folder) is not None

    def pick(self):
        """Promote the task's model to <task>/gradual_prune/ (what the next task loads); False when
        it waits for a pick by hand."""
        a = self.args
        record = read_record(self.record_file)
        choice = read_choice(self.folder)
        required = required_sparsity(self.folder)
        goal = read_goal(a.baseline_acc_file, a.dataset) if a.baseline_acc_file else None
        if choice is not None:   # picked before (by hand, or by a run that was then interrupted):
            # chosen.json is written after the promotion, so its model is in place; nothing to write
            self.logger.info('=== %s: keeping the pruning ratio picked before (%s, %s)', a.dataset,
                             ratio_key(choice['chosen_pruning_ratio']), choice.get('picked_by', 'auto'))
            return True
        if a.pick == 'hand':
            for line in record_report(self.folder, a.dataset, record, goal, a.baseline_acc_file,
                                      a.allow_acc_loss, a.max_allowed_network_width_multiplier):
                print(line, flush=True)
            return False
        elif a.pick == 'last':   # a method's one stage (PackNet): it must have kept its model
            if self.stopped is not None:
                with open(os.path.join(self.folder, self.stopped, 'result.json')) as f:
                    reason = json.load(f).get('reason')
                raise CPGError(f'{os.path.join(self.folder, self.stopped)} saved nothing ({reason}): it prunes '
                               f'too much for its retrain; lower the ratio (PRUNE_RATIO) or retrain longer '
                               f'(PACKNET_RETRAIN_EPOCHS)')
            saved = [r for r in a.pruning_ratios if ratio_key(r) in record]
            key, picked_by = (ratio_key(saved[-1]) if saved else '0.0'), 'last'
            if required:
                check_required(record, required, key)
        else:
            if goal is None:
                raise CPGError('--pick auto needs the accuracy goal (--baseline_acc_file); use --pick last')
            width = checkpoint_info(os.path.join(self.folder, 'scratch'), 'run Phase A first')['network_width_multiplier']
            key = choose_ratio(record, goal, a.allow_acc_loss,
                               is_at_max_width(width, a.max_allowed_network_width_multiplier), required) or '0.0'
            picked_by = 'auto'
        chosen, copied = promote(self.folder, None if float(key) == 0 else key, record, a.dataset, goal,
                                 picked_by=picked_by)
        self.logger.info('chosen pruning ratio for %s: %s (accuracy %s, goal %s, width %s)%s', a.dataset,
                         chosen['chosen_pruning_ratio'], chosen['accuracy'], goal,
                         chosen['network_width_multiplier'], '' if copied else ' (already in place)')
        return True

    def retrain(self):
        """Re-learn the pick mask of the picked model; its result replaces it only if it improves."""
        a = self.args
        source = chosen_source(self.folder, read_choice(self.folder))
        self.stage(run_retrain, 'finetune', 'retrain', load_folder=source, finetune_again=True,
                   epochs=a.retrain_epochs, lr=a.retrain_lr, lr_mask=a.retrain_lr_mask)
        def keep():
            kept = keep_retrain_if_improved(self.folder)
            self.logger.info('retrain %s', 'improved the task: retrained model kept' if kept
                             else 'did not improve: pruned model kept')
        self.on_main(keep)

    # ----- the whole task ----------------------------------------------------------------------------
    def run(self):
        """The task's stages in order; EXIT_OK when its model is in <task>/gradual_prune/ or waits
        for a pick by hand (chosen.json tells which)."""
        a = self.args
        task_id = 1 + (len(checkpoint_info(a.load_folder, 'finish the previous task first')['tasks'])
                       if a.load_folder else 0)
        status = self.phase_a()
        if status != EXIT_NO_CAPACITY:   # a task that owns nothing has nothing to prune or retrain
            self.pruning_stages()
        self.on_main(self.pick)   # rank 0 promotes; every rank reads the choice from the files
        if not self.picked():
            return EXIT_OK
        if a.retrain_epochs > 0 and a.learn_pick and task_id >= 2 and status != EXIT_NO_CAPACITY:
            self.retrain()
        return EXIT_OK


def run_task(args, data, logger, device, dist=None):
    """--mode task: every stage of one task in this process (this module's docstring)."""
    return TaskRunner(args, data, logger, device, dist).run()
