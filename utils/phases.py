"""The CPG phases of one task, shared by every experiment's entry script (spec §3).

  finetune  Phase A: pick + train the task on all free capacity (grow on failure, exit 2)
  prune     Phase B: one gradual-pruning stage s_i -> s_f (compacting)
  retrain   Phase C: re-learn the pick mask with the surviving weights, keep the best epoch
  inference evaluate every task of a final checkpoint in one process (no in-place masking)

Each phase writes `<save_folder>/result.json` (status + signature). Re-running a phase whose
result matches its signature replays the exit status without training or even loading its input,
and an interrupted phase resumes from `<save_folder>/resume.pth.tar` (written at most every
--resume_every_minutes and at the end of the phase): the bash loops can simply be run again.
The signature holds every setting that can change the phase's outcome plus the id of the
checkpoint it reads, so a result or resume state computed from another input is never reused.
Nothing here deletes a checkpoint: a new one atomically replaces the old one when it is ready.
"""
import hashlib
import json
import os
import time

import torch

from models import build_model
from models.layers import PICK_THRESHOLD

from .checkpoint import (CHECKPOINT_NAME, RESUME_NAME, atomic_write_json, checkpoint_info,
                         load_checkpoint, model_from_checkpoint, resolve_checkpoint, save_checkpoint)
from .data import seed_loader_epoch
from .errors import CPGError
from .grower import assign_free_capacity, owns_any, width_for_new_task
from .logger import append_jsonl
from .manager import Manager, build_weight_optimizer, set_lr
from .picker import build_pick_optimizer, reset_picks
from .pruner import GradualPruner
from .records import read_goal, read_record, reset_record, write_goal, write_record
from .stats import ownership_stats

# Exit statuses understood by the experiment scripts (spec §3.7; README "Exit codes").
EXIT_OK, EXIT_ERROR, EXIT_WIDEN, EXIT_NO_GOAL, EXIT_NO_CAPACITY, EXIT_STOP_PRUNING = 0, 1, 2, 3, 5, 6
PROTOCOL_STATUSES = (EXIT_WIDEN, EXIT_NO_GOAL, EXIT_NO_CAPACITY, EXIT_STOP_PRUNING)  # not errors


def must_prune_sparsity(total_num_tasks, learned):
    """Sparsity a task at maximum width that missed its goal must reach (spec §3.3)."""
    remaining = total_num_tasks - learned
    return round(1.0 - round(1.0 / (remaining + 1), 1), 4)


def lr_at(base, epoch, milestones, factors):
    """LR after `epoch` completed epochs: base times the factor of every milestone passed."""
    lr = base
    for milestone, factor in zip(milestones, factors):
        if epoch >= milestone:
            lr *= factor
    return lr


class PhaseContext:
    """Everything a phase needs: parsed args, the data provider, logger and device."""

    def __init__(self, args, data, logger, device, dist=None):
        self.args, self.data, self.logger, self.device = args, data, logger, torch.device(device)
        self.dist = dist  # utils.distributed.Distributed or None
        self.is_main = dist is None or dist.is_main
        self._last_resume = time.monotonic()
        self.run_id = None

    # ----- result / replay / resume -----------------------------------------------------------
    def signature(self, phase, source=None, **extra):
        """Identity of a phase run: every setting that can change its outcome, and the id of the
        checkpoint it starts from (`source`: that checkpoint's metadata, None for a fresh model)."""
        a = self.args
        sig = {'phase': phase, 'task': a.dataset, 'arch': a.arch, 'base_width': a.base_width,
               'num_classes': a.num_classes, 'load_folder': _norm(a.load_folder),
               'input_checkpoint': None if source is None else source.get('checkpoint_id'),
               'epochs': a.epochs, 'lr': a.lr, 'lr_mask': a.lr_mask, 'batch_size': a.batch_size,
               'seed': a.seed, 'weight_decay': a.weight_decay, 'learn_pick': a.learn_pick,
               'lr_decay_epochs': a.lr_decay_epochs, 'lr_decay_factor': a.lr_decay_factor,
               'mask_lr_decay_epochs': a.mask_lr_decay_epochs,
               'mask_lr_decay_factors': a.mask_lr_decay_factors, 'train_acc_gate': a.train_acc_gate,
               'max_width': a.max_allowed_network_width_multiplier,
               'total_num_tasks': a.total_num_tasks}
        sig.update(extra)
        # short id of this run, in every log.jsonl line and result.json: which run wrote what
        self.run_id = hashlib.sha1(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:12]
        return sig

    def replay(self, signature):
        """Exit status of an identical finished phase in save_folder, or None."""
        path = os.path.join(self.args.save_folder, 'result.json')
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            self.logger.info('%s is unreadable; running again', path)
            return None
        if result.get('signature') != signature:
            self.logger.info('%s holds a result of different settings or another input; running again', path)
            return None
        self.logger.info('already done (%s): status %d, accuracy %s', path, result['status'],
                         result.get('accuracy'))
        return result['status']

    def finish(self, signature, status, **info):
        if self.is_main:
            os.makedirs(self.args.save_folder, exist_ok=True)
            atomic_write_json(os.path.join(self.args.save_folder, 'result.json'),
                              dict(info, status=status, run=self.run_id, signature=signature))
            resume = os.path.join(self.args.save_folder, RESUME_NAME)  # the result replaces it
            for path in (resume, resume + '.json'):
                if os.path.exists(path):
                    os.remove(path)
        return status

    def save(self, model, name=CHECKPOINT_NAME, **extra):
        """The phase's frozen checkpoint (rank 0 writes it; the other ranks wait for it)."""
        if self.is_main:
            path = os.path.join(self.args.save_folder, name)
            nbytes = save_checkpoint(path, model, self.args.arch, frozen=True, **extra)
            self.logger.info('saved %s (%.1f MB)', path, nbytes / 2 ** 20)
        if self.dist is not None:
            self.dist.barrier()

    def save_resume(self, model, final, **state):
        """The resume state (float picks, optimizers, position), at most every
        --resume_every_minutes and after the last epoch. At width 1.5 for a task >= 2 it is ~1 GB:
        written every epoch it would cost more than a GPU epoch. Rank 0 decides alone (no
        collective), since only it writes."""
        minutes = getattr(self.args, 'resume_every_minutes', 0.0)
        due = final or minutes <= 0 or time.monotonic() - self._last_resume >= 60 * minutes
        if self.is_main and due:
            save_checkpoint(os.path.join(self.args.save_folder, RESUME_NAME), model, self.args.arch,
                            frozen=False, **state)
            self._last_resume = time.monotonic()

    def load_resume(self, signature):
        """The matching resume state, or None (a stale one is ignored, and overwritten later)."""
        path = os.path.join(self.args.save_folder, RESUME_NAME)
        if not os.path.isfile(path):
            return None
        ckpt = load_checkpoint(path, map_location='cpu', hint='')
        if ckpt.get('signature') != signature:
            self.logger.info('ignoring %s: written with different settings or another input', path)
            return None
        self.logger.info('resuming from %s at epoch %d', path, ckpt['epoch'])
        return ckpt

    # ----- model helpers ----------------------------------------------------------------------
    def load_model(self, folder, hint):
        ckpt = load_checkpoint(folder, map_location='cpu', hint=hint)
        return model_from_checkpoint(ckpt, self.device)

    def manager(self, model, task, train_loader, val_loader, net=None):
        reduce = self.dist.all_reduce_sum if self.dist is not None else None
        if getattr(self.args, 'channels_last', False):
            model.to(memory_format=torch.channels_last)
        return Manager(model, task, self.device, train_loader, val_loader, self.logger,
                       net=net, reduce=reduce, show_progress=self.is_main,
                       amp=getattr(self.args, 'amp', None),
                       channels_last=getattr(self.args, 'channels_last', False))

    def wrap(self, model):
        """DDP wrapper for training when distributed, else the model itself."""
        return self.dist.wrap(model) if self.dist is not None else model

    def seed_epoch(self, loader, epoch):
        """Data order and augmentation depend only on (seed, epoch) and the rank: resume is exact."""
        seed_loader_epoch(loader, self.args.seed, epoch)

    def log_epoch(self, model, task, phase, epoch, train, val, lrs):
        stats = ownership_stats(model, task)
        self.logger.info('%s task %d epoch %d | train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%% '
                         '| lr %s | sparsity %.4f | owned %.4f | free %.4f | picked %.4f | width %s',
                         phase, task, epoch, train['loss'], 100 * train['accuracy'], val['loss'],
                         100 * val['accuracy'], lrs, stats['sparsity'], stats['owned_fraction'],
                         stats['free_fraction'], stats['picked_fraction'], model.multiplier)
        if self.is_main:
            append_jsonl(os.path.join(self.args.save_folder, 'log.jsonl'),
                         {'phase': phase, 'run': self.run_id, 'task': task, 'epoch': epoch, 'time': time.time(),
                          'train': train, 'val': val, 'lr': lrs, **stats})


def _norm(path):
    return os.path.normpath(path) if path else None


def _rng_state():
    return {'torch': torch.get_rng_state()}


def _set_task_record(model, task, **fields):
    model.tasks[task - 1].update(fields)


def _picking_epoch(ctx, model, task, manager, sgd, adam, epoch, mask_factors, phase):
    """One epoch of weights + pick masks on the fixed-epoch LR schedule (Phase A and retrain)."""
    a = ctx.args
    lr = lr_at(a.lr, epoch, a.lr_decay_epochs, [a.lr_decay_factor] * len(a.lr_decay_epochs))
    lr_mask = lr_at(a.lr_mask, epoch, a.mask_lr_decay_epochs, mask_factors)
    set_lr(sgd, lr)
    set_lr(adam, lr_mask)
    ctx.seed_epoch(manager.train_loader, epoch)
    train, _ = manager.train_epoch(epoch, [sgd, adam])
    val = manager.validate()
    ctx.log_epoch(model, task, phase, epoch, train, val, {'lr': lr, 'lr_mask': lr_mask})
    return train, val


# --------------------------------------------------------------------------------------------------
# Phase A
# --------------------------------------------------------------------------------------------------
def run_finetune(ctx):
    """Phase A (spec §3.1). Returns the exit status (0, 2 widen, 5 owns nothing)."""
    a = ctx.args
    baseline = bool(a.save_goal_file)
    goal = None if baseline else read_goal(a.baseline_acc_file, a.dataset)  # GoalFileMissing -> 3

    # What the run starts from, read cheaply (sidecars): a finished run replays without loading.
    source = checkpoint_info(a.load_folder, 'finish the previous task first') if a.load_folder else None
    current = source['network_width_multiplier'] if source else a.network_width_multiplier
    learned = [t['name'] for t in source['tasks']] if source else []
    if a.dataset in learned:
        raise CPGError(f'task {a.dataset!r} is already learned in {a.load_folder}; '
                       f'load the checkpoint of the task before it')
    initial = None
    if getattr(a, 'initial_from', None):  # finetune baseline: start from another task's model
        initial = checkpoint_info(a.initial_from, 'train that task\'s baseline first')
        if len(initial['tasks']) != 1 or initial['network_width_multiplier'] != current:
            raise CPGError(f'--initial_from {a.initial_from} must hold one task at width {current} '
                           f'(it holds {len(initial["tasks"])} at {initial["network_width_multiplier"]})')
    width = width_for_new_task(a.network_width_multiplier, current,
                               a.max_allowed_network_width_multiplier)
    signature = ctx.signature('finetune', source, width=width, goal=goal,
                              initial_from=initial and initial.get('checkpoint_id'))
    replayed = ctx.replay(signature)
    if replayed is not None:
        return replayed

    if a.load_folder:
        model = ctx.load_model(a.load_folder, 'finish the previous task first')
    else:
        model = build_model(a.arch, a.base_width, a.network_width_multiplier).to(ctx.device)
    if initial is not None:
        initial = ctx.load_model(a.initial_from, 'train that task\'s baseline first')
    train_loader, val_loader, num_classes = ctx.data.loaders(a.dataset)
    task = model.add_task(a.dataset, num_classes, width)
    if initial is not None:  # every tensor, the head too when the class counts match (spec §7.3)
        state = initial.state_dict()
        if initial.tasks[0]['num_classes'] != num_classes:
            state = {k: v for k, v in state.items() if not k.startswith('heads.')}
        model.load_state_dict(state, strict=False)
        ctx.logger.info('initialized from %s (task %r)', a.initial_from, initial.tasks[0]['name'])
    assign_free_capacity(model, task)
    owns = owns_any(model, task)
    learn_pick = task >= 2 and a.learn_pick
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=learn_pick, fixed_pick=False, weight_decay=a.weight_decay)
    _set_task_record(model, task, picks=learn_pick, pruning_ratio=0.0)
    ctx.logger.info('Phase A: task %d %r, width multiplier %s, %d classes, goal %s, picks %s',
                    task, a.dataset, width, num_classes, goal, learn_pick)

    sgd = build_weight_optimizer(model, task, a.lr)
    adam = build_pick_optimizer(model, a.lr_mask) if learn_pick else None
    net = ctx.wrap(model)
    manager = ctx.manager(model, task, train_loader, val_loader, net=net)
    # mask LR x0 at the second milestone only if the task owns weights (spec §3.1 step 11)
    mask_factors = [f if (f != 0 or owns) else 1.0 for f in a.mask_lr_decay_factors]

    start, train, val = 0, None, None
    resume = ctx.load_resume(signature)
    if resume is not None:
        model.load_state_dict(resume['model'])
        sgd.load_state_dict(resume['sgd'])
        if adam is not None:
            adam.load_state_dict(resume['adam'])
        start, train, val = resume['epoch'], resume['train'], resume['val']
    elif a.pruning_ratio_to_acc_record_file and ctx.is_main:
        # A fresh Phase A makes the task's pruning record and ratio choice stale.
        reset_record(a.pruning_ratio_to_acc_record_file)

    for epoch in range(start, a.epochs):
        train, val = _picking_epoch(ctx, model, task, manager, sgd, adam, epoch, mask_factors, 'finetune')
        ctx.save_resume(model, epoch + 1 == a.epochs, signature=signature, epoch=epoch + 1,
                        sgd=sgd.state_dict(), adam=adam.state_dict() if adam else None, train=train, val=val)

    for _, layer in model.masked_layers():
        layer.end_phase()
    if val is None:  # zero epochs: evaluate what we have
        train, val = {'loss': 0.0, 'accuracy': 0.0}, manager.validate()
    acc, train_acc = val['accuracy'], train['accuracy']
    _set_task_record(model, task, accuracy=acc)
    ctx.save(model)
    if a.pruning_ratio_to_acc_record_file and ctx.is_main:
        write_record(a.pruning_ratio_to_acc_record_file, 0.0, acc)

    if baseline:
        if ctx.is_main:
            write_goal(a.save_goal_file, a.dataset, acc)
        ctx.logger.info('baseline accuracy of %r: %.4f -> %s', a.dataset, acc, a.save_goal_file)
        return ctx.finish(signature, EXIT_OK, accuracy=acc)

    at_max = width >= a.max_allowed_network_width_multiplier - 1e-9
    reached = train_acc > a.train_acc_gate and acc >= goal
    if reached or at_max:
        status = EXIT_OK if owns else EXIT_NO_CAPACITY
        why = 'goal reached' if reached else 'goal missed at maximum width: accept, must-prune rule applies'
    else:
        status = EXIT_WIDEN
        why = (f'goal missed (val {acc:.4f} vs goal {goal:.4f}, train {train_acc:.4f} vs gate '
               f'{a.train_acc_gate}): widen the network and retry')
    ctx.logger.info('Phase A result: val %.4f train %.4f goal %.4f -> %s (exit %d)',
                    acc, train_acc, goal, why, status)
    return ctx.finish(signature, status, accuracy=acc, train_accuracy=train_acc, width=width)


# --------------------------------------------------------------------------------------------------
# Phase B
# --------------------------------------------------------------------------------------------------
def _last_task(ctx, source):
    """Id of the task a pruning stage or retrain works on: the last one of its input checkpoint."""
    tasks = source['tasks']
    if not tasks or tasks[-1]['name'] != ctx.args.dataset:
        raise CPGError(f'the checkpoint in {ctx.args.load_folder} ends with task '
                       f'{tasks[-1]["name"] if tasks else None!r}, not {ctx.args.dataset!r}; '
                       f'load the folder written for this task')
    return len(tasks)


def _must_prune(ctx, source, task):
    """Required sparsity if the must-prune rule applies (spec §3.3), else None."""
    a = ctx.args
    if (a.total_num_tasks is None
            or source['network_width_multiplier'] < a.max_allowed_network_width_multiplier - 1e-9):
        return None
    record = read_record(a.pruning_ratio_to_acc_record_file) if a.pruning_ratio_to_acc_record_file else {}
    acc0 = record.get('0.0', source['tasks'][task - 1].get('accuracy'))
    goal = read_goal(a.baseline_acc_file, a.dataset)
    if acc0 is None or acc0 >= goal:
        return None
    return must_prune_sparsity(a.total_num_tasks, task)


def run_prune(ctx):
    """One gradual-pruning stage s_i -> s_f (spec §3.2). Returns 0, or 6 to stop the stage loop."""
    a = ctx.args
    hint = 'run the previous stage (or Phase A) first'
    source = checkpoint_info(a.load_folder, hint)
    task = _last_task(ctx, source)
    signature = ctx.signature('prune', source, initial_sparsity=a.initial_sparsity,
                              target_sparsity=a.target_sparsity, pruning_interval=a.pruning_interval,
                              pruning_frequency=a.pruning_frequency,
                              width=source['network_width_multiplier'])
    replayed = ctx.replay(signature)
    if replayed is not None:
        return replayed
    must = _must_prune(ctx, source, task)
    if must is not None and a.initial_sparsity >= must - 1e-9:
        ctx.logger.info('must-prune rule: sparsity %.2f already reaches the required %.2f; stop', a.initial_sparsity, must)
        return ctx.finish(signature, EXIT_STOP_PRUNING, reason='must-prune reached')
    model = ctx.load_model(a.load_folder, hint)

    train_loader, val_loader, _ = ctx.data.loaders(a.dataset)
    picks = bool(model.tasks[task - 1].get('picks'))
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=False, fixed_pick=picks, weight_decay=a.weight_decay)
    sgd = build_weight_optimizer(model, task, a.lr)
    net = ctx.wrap(model)
    manager = ctx.manager(model, task, train_loader, val_loader, net=net)
    steps_per_epoch = len(train_loader)
    pruner = GradualPruner(model, task, a.initial_sparsity, a.target_sparsity, begin_step=0,
                           end_step=a.pruning_interval * steps_per_epoch,
                           frequency=a.pruning_frequency, optimizer=sgd)
    if ctx.dist is not None:
        pruner.after_update = ctx.dist.broadcast_owners

    start, step, train, val = 0, 0, None, None
    resume = ctx.load_resume(signature)
    if resume is not None:
        model.load_state_dict(resume['model'])
        for _, layer in model.masked_layers():
            layer.refresh_ownership()
        sgd.load_state_dict(resume['sgd'])
        pruner.load_state_dict(resume['pruner'])
        start, step, train, val = resume['epoch'], resume['step'], resume['train'], resume['val']
    else:
        before = manager.validate()
        ctx.logger.info('prune stage %s -> %s: task %d before pruning val acc %.4f',
                        a.initial_sparsity, a.target_sparsity, task, before['accuracy'])

    for epoch in range(start, a.epochs):
        ctx.seed_epoch(train_loader, epoch)
        train, step = manager.train_epoch(epoch, [sgd], pruner=pruner, step=step)
        if epoch == a.epochs - 1:
            pruner.finalize()  # a stage shorter than the interval still ends at s_f
        val = manager.validate()
        ctx.log_epoch(model, task, 'prune', epoch, train, val, {'lr': a.lr})
        ctx.save_resume(model, epoch + 1 == a.epochs, signature=signature, epoch=epoch + 1, step=step,
                        sgd=sgd.state_dict(), pruner=pruner.state_dict(), train=train, val=val)

    for _, layer in model.masked_layers():
        layer.end_phase()
    if val is None:
        pruner.finalize()
        train, val = {'loss': 0.0, 'accuracy': 1.0}, manager.validate()
    acc, train_acc = val['accuracy'], train['accuracy']
    if train_acc <= a.train_acc_gate:
        ctx.logger.info('train accuracy %.4f <= gate %s: nothing saved, stop pruning', train_acc, a.train_acc_gate)
        return ctx.finish(signature, EXIT_STOP_PRUNING, accuracy=acc, train_accuracy=train_acc,
                          reason='train accuracy gate')
    _set_task_record(model, task, accuracy=acc, pruning_ratio=a.target_sparsity)
    ctx.save(model)
    if a.pruning_ratio_to_acc_record_file and ctx.is_main:
        write_record(a.pruning_ratio_to_acc_record_file, a.target_sparsity, acc)
    ctx.logger.info('prune stage done: sparsity %s, val acc %.4f', a.target_sparsity, acc)
    if must is not None and a.target_sparsity >= must - 1e-9:
        ctx.logger.info('must-prune rule: required sparsity %.2f reached; stop', must)
        return ctx.finish(signature, EXIT_STOP_PRUNING, accuracy=acc, train_accuracy=train_acc,
                          reason='must-prune reached', saved=True)
    return ctx.finish(signature, EXIT_OK, accuracy=acc, train_accuracy=train_acc, saved=True)


# --------------------------------------------------------------------------------------------------
# Phase C
# --------------------------------------------------------------------------------------------------
def run_retrain(ctx):
    """Re-learn the pick mask with the surviving weights (spec §3.5); keeps only the best epoch."""
    a = ctx.args
    hint = 'choose the pruning ratio first'
    source = checkpoint_info(a.load_folder, hint)
    task = _last_task(ctx, source)
    signature = ctx.signature('retrain', source, width=source['network_width_multiplier'],
                              patience=a.retrain_patience)
    replayed = ctx.replay(signature)
    if replayed is not None:
        return replayed
    if task < 2 or not a.learn_pick:
        ctx.logger.info('retrain: task %d learns no pick mask; nothing to do', task)
        return ctx.finish(signature, EXIT_OK, improved=False)
    model = ctx.load_model(a.load_folder, hint)

    train_loader, val_loader, _ = ctx.data.loaders(a.dataset)
    reset_picks(model, task)  # the stored pick is discarded; a fresh one starts at 0.01
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=True, fixed_pick=False, weight_decay=a.weight_decay)
    sgd = build_weight_optimizer(model, task, a.lr)
    adam = build_pick_optimizer(model, a.lr_mask)
    net = ctx.wrap(model)
    manager = ctx.manager(model, task, train_loader, val_loader, net=net)
    owns = owns_any(model, task)
    mask_factors = [f if (f != 0 or owns) else 1.0 for f in a.mask_lr_decay_factors]

    start, best, stale, improved = 0, None, 0, False
    resume = ctx.load_resume(signature)
    if resume is not None:
        model.load_state_dict(resume['model'])
        sgd.load_state_dict(resume['sgd'])
        if adam is not None:
            adam.load_state_dict(resume['adam'])
        start, best, stale, improved = resume['epoch'], resume['best'], resume['stale'], resume['improved']
    else:
        # The retrained model must beat the model it would replace. The original compared with the
        # fresh mask's first validation, so a retrain worse than the pruned model could replace it.
        fresh = manager.validate()['accuracy']
        pruned = model.tasks[task - 1].get('accuracy')
        best = fresh if pruned is None else max(fresh, pruned)
        ctx.logger.info('retrain: task %d starts at val acc %.4f with a fresh pick mask; '
                        'to keep, it must beat %.4f (the pruned model)', task, fresh, best)

    # `improved` is the truth about retrain/checkpoint.pth.tar: a file left by an interrupted or
    # differently configured attempt may be there, and only result.json says whether it counts.
    for epoch in range(start, a.epochs):
        if stale >= a.retrain_patience:
            break
        train, val = _picking_epoch(ctx, model, task, manager, sgd, adam, epoch, mask_factors, 'retrain')
        if val['accuracy'] > best:
            best, stale, improved = val['accuracy'], 0, True
            _set_task_record(model, task, accuracy=best)
            ctx.save(model)  # frozen: the pick is packed exactly as end_phase would pack it
        else:
            stale += 1
        last = epoch + 1 == a.epochs or stale >= a.retrain_patience
        ctx.save_resume(model, last, signature=signature, epoch=epoch + 1, sgd=sgd.state_dict(),
                        adam=adam.state_dict() if adam else None, best=best, stale=stale,
                        improved=improved)
    ctx.logger.info('retrain done: best val acc %.4f (%s)', best,
                    'improved, kept' if improved else 'no improvement, discarded')
    return ctx.finish(signature, EXIT_OK, accuracy=best, improved=improved)


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------
def run_inference(ctx):
    """Evaluate tasks of a final checkpoint; returns (status, results dict)."""
    a = ctx.args
    ckpt_path = a.load_folder
    model = ctx.load_model(ckpt_path, 'train the tasks first (the last task\'s gradual_prune folder)')
    names = [t['name'] for t in model.tasks]
    wanted = a.tasks if getattr(a, 'tasks', None) else ([a.dataset] if a.dataset else names)
    for name in wanted:
        if name not in names:
            raise CPGError(f'task {name!r} is not in the checkpoint {ckpt_path} (it holds: {", ".join(names)})')
    size_mb = os.path.getsize(resolve_checkpoint(ckpt_path)) / 2 ** 20
    rows = []
    for name in wanted:
        task = model.task_id(name)
        val = ctx.manager(model, task, None, ctx.data.val_loader(name)).validate()
        stats = ownership_stats(model, task)
        info = model.tasks[task - 1]
        rows.append({'task': name, 'accuracy': val['accuracy'],
                     'accuracy_when_learned': info.get('accuracy'),
                     'network_width_multiplier': info['multiplier'],
                     'pruning_ratio': info.get('pruning_ratio'),
                     'owned_fraction': stats['owned_fraction'],
                     'picked_fraction': stats['picked_fraction']})
        ctx.logger.info('inference task %d %r: accuracy %.4f (when learned %s)', task, name,
                        val['accuracy'], info.get('accuracy'))
    average = sum(r['accuracy'] for r in rows) / max(len(rows), 1)
    return EXIT_OK, {'checkpoint': resolve_checkpoint(ckpt_path), 'tasks': rows,
                     'average_accuracy': average, 'checkpoint_mb': size_mb,
                     'pick_threshold': PICK_THRESHOLD}


def format_results_table(results):
    """Plain-text table of run_inference's results."""
    head = f'{"task":<32} {"acc %":>7} {"learned %":>9} {"width":>5} {"pruned":>6} {"owned":>6} {"picked":>6}'
    lines = [head, '-' * len(head)]
    for r in results['tasks']:
        learned = '' if r['accuracy_when_learned'] is None else f'{100 * r["accuracy_when_learned"]:.2f}'
        lines.append(f'{r["task"]:<32} {100 * r["accuracy"]:>7.2f} {learned:>9} '
                     f'{r["network_width_multiplier"]:>5.2f} {r["pruning_ratio"] or 0:>6.2f} '
                     f'{r["owned_fraction"]:>6.3f} {r["picked_fraction"]:>6.3f}')
    lines.append('-' * len(head))
    lines.append(f'average accuracy {100 * results["average_accuracy"]:.2f}% | checkpoint '
                 f'{results["checkpoint_mb"]:.2f} MB')
    return '\n'.join(lines)
