"""The CPG phases of one task, shared by every experiment's entry script (spec §3).

  finetune  Phase A: pick + train the task on all free capacity (grow on failure, exit 2)
  prune     Phase B: one gradual-pruning stage s_i -> s_f (compacting)
  retrain   Phase C: re-learn the pick mask with the surviving weights, keep the best epoch

Experiments differ only in configuration: the LR schedule (utils/schedules.py), which epoch
becomes the result (utils/selection.py), the head kind / objective, and the data provider.
Replay, resume and the epoch loop are in utils/context.py; inference in utils/inference.py.
"""
import inspect
import os

import torch

from models import MODELS, build_model, read_pretrained_state

from .checkpoint import checkpoint_info
from .context import (EXIT_NO_CAPACITY, EXIT_OK, EXIT_STOP_PRUNING, EXIT_WIDEN, file_identity,
                      run_epochs, set_task_record)
from .errors import CPGError
from .logger import FILE_ONLY
from .grower import assign_free_capacity, owns_any, width_for_new_task
from .picker import build_pick_optimizer, reset_picks
from .pruner import GradualPruner
from .recipes import build_head_optimizer, build_weight_optimizer
from .records import read_goal, read_record, reset_record, write_goal, write_record, write_required
from .schedules import ConstantSchedule, MilestoneSchedule, build_schedule
from .selection import BestEpoch, build_selection


def model_kwargs(args):
    """The architecture's own constructor flags (e.g. SphereNet's image_size), read from args:
    every parameter of its registry factory besides the widths that args has."""
    params = inspect.signature(MODELS[args.arch]).parameters
    return {name: getattr(args, name) for name in params
            if name not in ('base_width', 'multiplier') and getattr(args, name, None) is not None}


def must_prune_sparsity(total_num_tasks, learned):
    """Sparsity a task at maximum width that missed its goal must reach (spec §3.3)."""
    remaining = total_num_tasks - learned
    return round(1.0 - round(1.0 / (remaining + 1), 1), 4)


def _begin(model, task, learn_pick, fixed_pick, weight_decay, channels_last=False):
    if channels_last:   # before the phase's buffers are made from the weights (empty_like keeps it)
        model.to(memory_format=torch.channels_last)
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=learn_pick, fixed_pick=fixed_pick, weight_decay=weight_decay)


def _end(model):
    for _, layer in model.masked_layers():
        layer.end_phase()


def _save_result(ctx, model, task, selection, **record):
    """Save the stage's result: its best epoch (kept in memory by ctx.keep_best) when the
    selection keeps one, else the model as it ends; `record`: fields of its task table entry."""
    if selection.saves_each_best and selection.improved:
        ctx.restore_best(model)
        set_task_record(model, task, **record)
    else:
        set_task_record(model, task, accuracy=selection.accuracy, **record)
    ctx.save(model)


def _evaluate_only(manager, selection):
    """A stage that ran no epoch (a pretrained task, or epochs 0) is the model as it is."""
    if selection.val is None:
        selection.val = manager.validate()


def _load_pretrained(ctx, model, task):
    """The new task's backbone (and head, when the file's head fits) from --pretrained: the first
    task's, or any column's of an architecture that starts every task from it (ProgressiveNet)
    (spec §5.2: torchvision's ResNet-50; §5.3: the original's face_weight.pth)."""
    try:
        info = model.load_pretrained(read_pretrained_state(ctx.args.pretrained), task)
    except ValueError as exc:
        raise CPGError(f'--pretrained {ctx.args.pretrained}: {exc}') from None
    ctx.logger.info('pretrained weights from %s: %d tensors copied, head %s', ctx.args.pretrained,
                    info['copied'], 'from fc' if info['head_from_fc'] else 'fresh')


# --------------------------------------------------------------------------------------------------
# Phase A
# --------------------------------------------------------------------------------------------------
def run_finetune(ctx):
    """Phase A (spec §3.1, §8.1). Returns the exit status (0, 2 widen, 5 owns nothing)."""
    a = ctx.args
    baseline = bool(a.save_goal_file)
    # GoalFileMissing -> 3; no goal file at all (PackNet, Piggyback): every result is accepted
    goal = None if baseline or not a.baseline_acc_file else read_goal(a.baseline_acc_file, a.dataset)

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
    if a.pretrained and not os.path.isfile(a.pretrained):
        raise CPGError(f'pretrained weights not found: {a.pretrained}; place the pretrained file there '
                       f'(docs/experiment2.md "Data") or unset PRETRAINED_PATH')
    width = width_for_new_task(a.network_width_multiplier, current,
                               a.max_allowed_network_width_multiplier)
    signature = ctx.signature('finetune', source, width=width, goal=goal,
                              initial_from=initial and initial.get('checkpoint_id'),
                              pretrained=file_identity(a.pretrained))
    replayed = ctx.replay(signature)
    if replayed is not None:
        return replayed

    if a.load_folder:
        model = ctx.load_model(a.load_folder, 'finish the previous task first')
    else:
        try:
            model = build_model(a.arch, a.base_width, a.network_width_multiplier,
                                **model_kwargs(a)).to(ctx.device)
        except ValueError as exc:   # e.g. a width the architecture cannot take
            raise CPGError(f'--arch {a.arch}: {exc}') from None
    if initial is not None:
        initial = ctx.load_model(a.initial_from, 'train that task\'s baseline first')
    train_loader, val_loader, num_classes = ctx.data.loaders(a.dataset)
    try:
        task = model.add_task(a.dataset, num_classes, width, head=a.head)
    except ValueError as exc:   # e.g. ProgressiveNet cannot grow
        raise CPGError(f'--arch {a.arch}: cannot add task {a.dataset!r}: {exc}') from None
    if initial is not None:  # every tensor, the head too when the class counts match (spec §7.3)
        state = initial.state_dict()
        if initial.tasks[0]['num_classes'] != num_classes:
            state = {k: v for k, v in state.items() if not k.startswith('heads.')}
        model.load_state_dict(state, strict=False)
        ctx.logger.info('initialized from %s (task %r)', a.initial_from, initial.tasks[0]['name'])
    if a.pretrained:
        _load_pretrained(ctx, model, task)
    assign_free_capacity(model, task)
    owns = owns_any(model, task)
    learn_pick = task >= 2 and a.learn_pick
    _begin(model, task, learn_pick, fixed_pick=False, weight_decay=a.weight_decay, channels_last=a.channels_last)
    set_task_record(model, task, picks=learn_pick, pruning_ratio=0.0)
    ctx.logger.info('Phase A: task %d %r, width multiplier %s, %d classes, goal %s, picks %s, '
                    'schedule %s, selection %s', task, a.dataset, width, num_classes, goal, learn_pick,
                    a.lr_schedule, a.selection)

    sgd = build_weight_optimizer(model, task, a, a.lr)
    head_opt = build_head_optimizer(model, task, a)
    adam = build_pick_optimizer(model, a.lr_mask) if learn_pick else None
    manager = ctx.manager(model, task, train_loader, val_loader, net=ctx.wrap(model))
    schedule = build_schedule(a, a.lr, a.lr_mask, a.epochs, owns_weights=owns)
    selection = build_selection(a, 'finetune', a.epochs)
    record_file = a.pruning_ratio_to_acc_record_file

    def on_fresh():  # a fresh Phase A makes the task's pruning record and ratio choice stale
        if record_file and ctx.is_main:
            reset_record(record_file)

    def on_best(sel):
        set_task_record(model, task, accuracy=sel.accuracy)
        ctx.keep_best(model)

    trained = run_epochs(ctx, 'finetune', model, task, manager, sgd, adam, schedule, selection,
                         signature, on_fresh=on_fresh, on_best=on_best, head_opt=head_opt)
    _evaluate_only(manager, selection)
    _end(model)
    acc, train_acc = selection.accuracy, selection.train_accuracy
    if baseline or a.epochs == 0:
        _save_result(ctx, model, task, selection)
    if record_file and ctx.is_main:
        write_record(record_file, 0.0, acc)

    if baseline:
        if ctx.is_main:
            write_goal(a.save_goal_file, a.dataset, acc)
        ctx.logger.info('baseline accuracy of %r: %.4f -> %s', a.dataset, acc, a.save_goal_file)
        std = (selection.val or {}).get('accuracy_std')   # face verification: over the LFW folds
        return ctx.finish(signature, EXIT_OK, accuracy=acc, **({} if std is None else {'accuracy_std': std}))
    if a.epochs == 0:  # the paper's ImageNet task: pretrained, evaluated, not trained (spec §5.2)
        ctx.logger.info('Phase A: %r evaluated without training: val %.4f (goal %s)', a.dataset, acc, goal)
        return ctx.finish(signature, EXIT_OK if owns else EXIT_NO_CAPACITY, accuracy=acc, width=width)

    at_max = width >= a.max_allowed_network_width_multiplier - 1e-9
    status, why, below_gate = _phase_a_outcome(a, goal, acc, selection, owns, at_max)
    if status != EXIT_WIDEN:   # a model that will be trained again wider is never read: not saved
        # the pruning stages read both: the relative gate's reference, and whether the task was
        # accepted at maximum width below the gate (the must-prune rule applies, spec §3.3)
        fields = {} if train_acc is None else {'phase_a_train_accuracy': train_acc}
        if below_gate:
            fields['below_gate_at_max_width'] = True
        _save_result(ctx, model, task, selection, **fields)
    ctx.logger.info('Phase A result after %d epochs: val %.4f (epoch %s) goal %s -> %s (exit %d)',
                    trained, acc, selection.epoch, goal, why, status)
    return ctx.finish(signature, status, accuracy=acc, train_accuracy=train_acc, width=width,
                      epoch=selection.epoch, reason=why)


def _phase_a_outcome(a, goal, acc, selection, owns, at_max):
    """(exit status, reason, below_gate) of Phase A: accept (0, or 5 when the task owns nothing)
    or widen (2); below_gate: accepted at maximum width below the train-accuracy gate. Each reason
    has its own words: the goal, the train-accuracy gate, or both can fail."""
    accepted = EXIT_OK if owns else EXIT_NO_CAPACITY
    if goal is None:
        return accepted, 'no goal: accepted', False
    met = acc >= goal - a.goal_margin
    gated = selection.passes_gate()
    if met and gated:
        return accepted, 'goal reached', False
    goal_text = f'val {acc:.4f} {">=" if met else "<"} goal {goal:.4f} - margin {a.goal_margin}'
    gate_text = '' if gated else selection.gate_reason()
    if met:   # only the gate failed
        what = f'goal met ({goal_text}) but {gate_text}'
    else:
        what = f'goal missed ({goal_text}{", and " + gate_text if gate_text else ""})'
    if not at_max:
        return EXIT_WIDEN, f'{what}: widen the network and retry', False
    if met and getattr(a, 'gate_stops_must_prune', False):   # the original: only a missed goal
        return accepted, f'{what} at maximum width: accept (the goal was met: no must-prune rule)', True
    return accepted, f'{what} at maximum width: accept, must-prune rule applies', not gated


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
    """Required sparsity if the must-prune rule applies (spec §3.3), else None: the task is at the
    maximum width and its Phase A missed the goal there or (unless --gate_stops_must_prune, the
    original) was accepted below the train-accuracy gate."""
    a = ctx.args
    if (a.total_num_tasks is None or not a.baseline_acc_file
            or source['network_width_multiplier'] < a.max_allowed_network_width_multiplier - 1e-9):
        return None
    record = read_record(a.pruning_ratio_to_acc_record_file) if a.pruning_ratio_to_acc_record_file else {}
    acc0 = record.get('0.0', source['tasks'][task - 1].get('accuracy'))
    goal = read_goal(a.baseline_acc_file, a.dataset)
    missed = acc0 is not None and acc0 < goal - a.goal_margin
    gated = not a.gate_stops_must_prune and bool(source['tasks'][task - 1].get('below_gate_at_max_width'))
    if not (missed or gated):
        return None
    return must_prune_sparsity(a.total_num_tasks, task)


def _pruning_options(a):
    """The pruning rules that differ from the defaults (the original's, utils/recipes.py)."""
    options = {}
    if a.release_zeroing != 'release':
        options['release_zeroing'] = a.release_zeroing
    if a.sparsity_rule != 'exact':
        options['sparsity_rule'] = a.sparsity_rule
    if a.gate_stops_must_prune:
        options['gate_stops_must_prune'] = True
    return options


def prune_schedule(a):
    """A pruning stage's LRs: constant (CPG, spec §3.2), or x --lr_decay_factor after the epochs of
    --prune_lr_decay_epochs (PackNet's retrain); the pick mask is frozen (LR 0)."""
    if a.prune_lr_decay_epochs:
        return MilestoneSchedule(a.lr, 0.0, a.epochs, a.prune_lr_decay_epochs, a.lr_decay_factor, [], [])
    return ConstantSchedule(a.lr, 0.0, a.epochs)


def run_prune(ctx):
    """One gradual-pruning stage s_i -> s_f (spec §3.2). Returns 0, or 6 to stop the stage loop."""
    a = ctx.args
    hint = 'run the previous stage (or Phase A) first'
    source = checkpoint_info(a.load_folder, hint)
    task = _last_task(ctx, source)
    goal = read_goal(a.baseline_acc_file, a.dataset) if a.selection == 'goal' else None
    extra_sig = {} if goal is None else {'goal': goal}   # unchanged signatures of the other rules
    if a.prune_lr_decay_epochs:
        extra_sig['prune_lr_decay_epochs'] = a.prune_lr_decay_epochs
    extra_sig.update(_pruning_options(a))
    must = _must_prune(ctx, source, task)
    # Under the rule the stage must reach its share whatever its train accuracy (or goal floor)
    # says; --gate_stops_must_prune (the original) lets the gate stop it first.
    enforce = must is not None and not a.gate_stops_must_prune
    if must is not None:
        extra_sig['must_prune'] = must
    signature = ctx.signature('prune', source, **extra_sig, initial_sparsity=a.initial_sparsity,
                              target_sparsity=a.target_sparsity, pruning_interval=a.pruning_interval,
                              pruning_frequency=a.pruning_frequency,
                              width=source['network_width_multiplier'])
    if a.pruning_ratio_to_acc_record_file and ctx.is_main:   # what the choosers may not pick below
        write_required(a.pruning_ratio_to_acc_record_file, must if enforce else None, a.dataset)
    replayed = ctx.replay(signature)
    if replayed is not None:
        return replayed
    if must is not None and a.initial_sparsity >= must - 1e-9:
        ctx.logger.info('must-prune rule: sparsity %.2f already reaches the required %.2f; stop', a.initial_sparsity, must)
        return ctx.finish(signature, EXIT_STOP_PRUNING, reason='must-prune reached')
    model = ctx.load_model(a.load_folder, hint)

    train_loader, val_loader, _ = ctx.data.loaders(a.dataset)
    _begin(model, task, learn_pick=False, fixed_pick=bool(model.tasks[task - 1].get('picks')),
           weight_decay=a.weight_decay, channels_last=a.channels_last)
    sgd = build_weight_optimizer(model, task, a, a.lr)
    head_opt = build_head_optimizer(model, task, a)
    manager = ctx.manager(model, task, train_loader, val_loader, net=ctx.wrap(model))
    pruner = GradualPruner(model, task, a.initial_sparsity, a.target_sparsity, begin_step=0,
                           end_step=a.pruning_interval * len(train_loader),
                           frequency=a.pruning_frequency, optimizer=sgd,
                           release_zeroing=a.release_zeroing, sparsity_rule=a.sparsity_rule)
    if ctx.dist is not None:
        pruner.after_update = ctx.dist.broadcast_owners
    reference = source['tasks'][task - 1].get('phase_a_train_accuracy')
    selection = build_selection(a, 'prune', a.epochs, goal=goal, reference=reference, must_prune=enforce)
    if enforce:
        ctx.logger.info('must-prune rule: this task must free %.2f of its capacity; the train-accuracy '
                        'gate and goal floor do not stop this stage', must)

    def on_best(sel):
        set_task_record(model, task, accuracy=sel.accuracy, pruning_ratio=a.target_sparsity)
        ctx.keep_best(model)

    def on_fresh():
        before = manager.validate()
        ctx.logger.info('prune stage %s -> %s: task %d before pruning val acc %.4f',
                        a.initial_sparsity, a.target_sparsity, task, before['accuracy'], extra=FILE_ONLY)
        if a.pruning_interval == 0:  # one-shot (PackNet): prune to the target, then retrain
            pruner.finalize()
            ctx.logger.info('one-shot pruning to %s before retraining', a.target_sparsity)
            if selection.saves_each_best:   # PackNet's main.py: the retrain must beat the pruned model
                pruner.before_validation()
                pruned = manager.validate()
                ctx.logger.info('after one-shot pruning: val acc %.4f (a retrained epoch is kept only '
                                'if it beats it)', pruned['accuracy'])
                if selection.observe(-1, None, pruned):
                    on_best(selection)

    schedule = prune_schedule(a)
    run_epochs(ctx, 'prune', model, task, manager, sgd, None, schedule,
               selection, signature, pruner=pruner, on_fresh=on_fresh, on_best=on_best, head_opt=head_opt)
    if selection.val is None:
        pruner.finalize()
        pruner.before_validation()
        _evaluate_only(manager, selection)
    _end(model)
    acc, train_acc = selection.accuracy, selection.train_accuracy
    if not selection.passes_gate():
        reason = selection.gate_reason()
        ctx.logger.info('%s: nothing saved, stop pruning', reason)
        return ctx.finish(signature, EXIT_STOP_PRUNING, accuracy=acc, train_accuracy=train_acc,
                          reason=reason)
    _save_result(ctx, model, task, selection, pruning_ratio=a.target_sparsity)
    if a.pruning_ratio_to_acc_record_file and ctx.is_main:
        write_record(a.pruning_ratio_to_acc_record_file, a.target_sparsity, acc)
    ctx.logger.info('prune stage done: sparsity %s, val acc %.4f (epoch %s)', a.target_sparsity, acc,
                    selection.epoch)
    if must is not None and a.target_sparsity >= must - 1e-9:
        ctx.logger.info('must-prune rule: required sparsity %.2f reached; stop', must)
        return ctx.finish(signature, EXIT_STOP_PRUNING, accuracy=acc, train_accuracy=train_acc,
                          reason='must-prune reached', saved=True)
    return ctx.finish(signature, EXIT_OK, accuracy=acc, train_accuracy=train_acc, saved=True,
                      epoch=selection.epoch)


# --------------------------------------------------------------------------------------------------
# Phase C
# --------------------------------------------------------------------------------------------------
def run_retrain(ctx):
    """Re-learn the pick mask with the surviving weights (spec §3.5); keeps only the best epoch."""
    a = ctx.args
    hint = 'choose the pruning ratio first'
    source = checkpoint_info(a.load_folder, hint)
    task = _last_task(ctx, source)
    extra_sig = {} if a.retrain_baseline == 'pruned' else {'retrain_baseline': a.retrain_baseline}
    signature = ctx.signature('retrain', source, width=source['network_width_multiplier'],
                              patience=a.retrain_patience, **extra_sig)
    replayed = ctx.replay(signature)
    if replayed is not None:
        return replayed
    if task < 2 or not a.learn_pick:
        ctx.logger.info('retrain: task %d learns no pick mask; nothing to do', task)
        return ctx.finish(signature, EXIT_OK, improved=False)
    model = ctx.load_model(a.load_folder, hint)

    train_loader, val_loader, _ = ctx.data.loaders(a.dataset)
    reset_picks(model, task)  # the stored pick is discarded; a fresh one starts at 0.01
    _begin(model, task, learn_pick=True, fixed_pick=False, weight_decay=a.weight_decay,
           channels_last=a.channels_last)
    sgd = build_weight_optimizer(model, task, a, a.lr)
    head_opt = build_head_optimizer(model, task, a)
    adam = build_pick_optimizer(model, a.lr_mask)
    manager = ctx.manager(model, task, train_loader, val_loader, net=ctx.wrap(model))
    schedule = build_schedule(a, a.lr, a.lr_mask, a.epochs, owns_weights=owns_any(model, task),
                              kind='milestones')
    selection = BestEpoch(patience=a.retrain_patience)

    def on_fresh():
        # The retrained model must beat the model it would replace. The original compared with the
        # fresh mask's first validation, so a retrain worse than the pruned model could replace it
        # (--retrain_baseline fresh restores that).
        fresh = manager.validate()['accuracy']
        pruned = model.tasks[task - 1].get('accuracy')
        if a.retrain_baseline == 'fresh' or pruned is None:
            selection.threshold, what = fresh, 'the fresh pick mask\'s first validation, as the original'
        else:
            selection.threshold, what = max(fresh, pruned), 'the pruned model'
        ctx.logger.info('retrain: task %d starts at val acc %.4f with a fresh pick mask; '
                        'to keep, it must beat %.4f (%s)', task, fresh, selection.threshold, what)

    def on_best(sel):  # frozen: the pick is packed exactly as end_phase would pack it
        set_task_record(model, task, accuracy=sel.accuracy)
        ctx.keep_best(model)

    # `improved` is the truth about retrain/checkpoint.pth.tar: a file left by an interrupted or
    # differently configured attempt may be there, and only result.json says whether it counts.
    run_epochs(ctx, 'retrain', model, task, manager, sgd, adam, schedule, selection, signature,
               on_fresh=on_fresh, on_best=on_best, head_opt=head_opt)
    _end(model)
    if selection.improved:   # the best epoch, kept in memory, is the retrain's checkpoint
        ctx.restore_best(model)
        ctx.save(model)
    ctx.logger.info('retrain done: best val acc %.4f (%s)', selection.best,
                    'improved, kept' if selection.improved else 'no improvement, discarded')
    return ctx.finish(signature, EXIT_OK, accuracy=selection.best, improved=selection.improved)
