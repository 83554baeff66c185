"""What every phase shares: its context (args, data, device, DDP), replay, resume and the
epoch loop (spec §3). The phases themselves are in utils/phases.py.

Each phase writes `<save_folder>/result.json` (status + signature). Re-running a phase whose
result matches its signature replays the exit status without training or even loading its input,
and an interrupted phase resumes from `<save_folder>/resume.pth.tar` (written at most every
--resume_every_minutes, never after the last epoch): the scripts can simply be run again. A phase
that selects its best epoch keeps it in memory (and in the resume state) and writes it once, at
its end. The signature holds every setting that can change the phase's
outcome plus the id of the checkpoint it reads, so a result or resume state computed from another
input is never reused. Nothing here deletes a checkpoint: a new one atomically replaces the old
one when it is ready.
"""
import copy
import hashlib
import json
import os
import time

import torch

from .checkpoint import (CHECKPOINT_NAME, RESUME_NAME, atomic_write_json, frozen_state_dict, load_checkpoint,
                         model_from_checkpoint, read_sidecar, save_checkpoint)
from .data import seed_loader_epoch
from .logger import FILE_ONLY, append_jsonl
from .manager import Manager, set_lr
from models.angle import angle_lambda

from .objectives import objective_for
from .recipes import head_lr, recipe_signature, train_bn
from .stats import ownership_stats

# Exit statuses understood by the experiment scripts (spec §3.7; docs/files.md "Exit codes").
EXIT_OK, EXIT_ERROR, EXIT_WIDEN, EXIT_NO_GOAL, EXIT_NO_CAPACITY, EXIT_STOP_PRUNING = 0, 1, 2, 3, 5, 6
PROTOCOL_STATUSES = (EXIT_WIDEN, EXIT_NO_GOAL, EXIT_NO_CAPACITY, EXIT_STOP_PRUNING)  # not errors

# Settings that change what any phase computes (besides the phase's own extras).
SIGNATURE_ARGS = ('dataset', 'arch', 'base_width', 'num_classes', 'epochs', 'lr', 'lr_mask',
                  'batch_size', 'seed', 'weight_decay', 'learn_pick', 'lr_schedule', 'lr_decay_epochs',
                  'lr_decay_factor', 'mask_lr_decay_epochs', 'mask_lr_decay_factors', 'patience',
                  'max_decays', 'plateau_mask_factor', 'selection', 'train_acc_gate', 'goal_margin',
                  'max_allowed_network_width_multiplier', 'total_num_tasks', 'val_fraction',
                  'image_size', 'head')
# Settings of one experiment's own flags: in the signature only where the entry script has them,
# so that adding an experiment never invalidates the finished stages of another.
EXPERIMENT_SIGNATURE_ARGS = ('pairs_file', 'verification_task', 'weighted_loss_tasks',
                             'angle_lambda_restart')


class ModelCache:
    """The model the last stage of this process saved, under that checkpoint's id: the next stage
    of the same task takes it from memory instead of rebuilding it from the file. A stage that
    takes it changes it, so it is taken out; only a save puts a model back."""

    def __init__(self):
        self.checkpoint_id, self.model = None, None

    def put(self, checkpoint_id, model):
        self.checkpoint_id, self.model = checkpoint_id, model

    def take(self, checkpoint_id):
        if checkpoint_id is None or checkpoint_id != self.checkpoint_id:
            return None
        model, self.checkpoint_id, self.model = self.model, None, None
        return model


class PhaseContext:
    """Everything a phase needs: parsed args, the data provider, logger and device; `models`: the
    ModelCache a task's stages share (--mode task), None for a single stage."""

    def __init__(self, args, data, logger, device, dist=None, models=None):
        self.args, self.data, self.logger, self.device = args, data, logger, torch.device(device)
        self.dist = dist  # utils.distributed.Distributed or None
        self.is_main = dist is None or dist.is_main
        self.models = models
        self._last_resume = time.monotonic()
        self.run_id = None
        self.best = None   # the best epoch so far: {'state': frozen state dict, 'tasks': task table}

    # ----- result / replay / resume -----------------------------------------------------------
    def signature(self, phase, source=None, **extra):
        """Identity of a phase run: every setting that can change its outcome, and the id of the
        checkpoint it starts from (`source`: that checkpoint's metadata, None for a fresh model)."""
        a = self.args
        sig = {name: getattr(a, name, None) for name in SIGNATURE_ARGS}
        sig.update({name: getattr(a, name) for name in EXPERIMENT_SIGNATURE_ARGS if hasattr(a, name)})
        sig.update(recipe_signature(a))   # only the recipe settings that differ from their defaults
        sig.update(phase=phase, load_folder=_relative(a.load_folder, a.save_folder),
                   input_checkpoint=None if source is None else source.get('checkpoint_id'))
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
        """The phase's frozen checkpoint (rank 0 writes it; the other ranks wait for it). The model
        then is that checkpoint: the next stage of this process may take it (ModelCache)."""
        path = os.path.join(self.args.save_folder, name)
        if self.is_main:
            nbytes = save_checkpoint(path, model, self.args.arch, frozen=True, **extra)
            self.logger.info('saved %s (%.1f MB)', path, nbytes / 2 ** 20, extra=FILE_ONLY)
        if self.dist is not None:
            self.dist.barrier()
        if self.models is not None:
            self.models.put(read_sidecar(path)['checkpoint_id'], model)

    def keep_best(self, model):
        """Keep the epoch just selected in memory (frozen, as it would be saved); it is written
        once, when the stage ends (restore_best), instead of at every new best."""
        self.best = {'state': {k: v.detach().clone() for k, v in frozen_state_dict(model).items()},
                     'tasks': copy.deepcopy(model.tasks)}

    def restore_best(self, model):
        """The model becomes the kept best epoch (after the phase ended: packed picks)."""
        model.load_state_dict(self.best['state'])
        for task, kept in zip(model.tasks, self.best['tasks']):
            task.clear()
            task.update(kept)

    def save_resume(self, model, **state):
        """The resume state (float picks, optimizers, position, the best epoch kept so far), at
        most every --resume_every_minutes (0: after every epoch but the last). At width 1.5 for a
        task >= 2 it is ~1 GB, so it is never written where nobody reads it: not after a stage's
        last epoch (the stage's result follows). Rank 0 decides alone (no collective)."""
        minutes = getattr(self.args, 'resume_every_minutes', 0.0)
        due = minutes <= 0 or time.monotonic() - self._last_resume >= 60 * minutes
        if self.is_main and due:
            save_checkpoint(os.path.join(self.args.save_folder, RESUME_NAME), model, self.args.arch,
                            frozen=False, best=self.best, **state)
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
        """The model of the checkpoint in `folder`: from memory when the stage before it in this
        process saved it (ModelCache), else rebuilt from the file."""
        if self.models is not None:
            meta = read_sidecar(folder)
            model = self.models.take(meta and meta.get('checkpoint_id'))
            if model is not None:
                return model
        ckpt = load_checkpoint(folder, map_location='cpu', hint=hint)
        model = model_from_checkpoint(ckpt, self.device)
        self.use_stored_shape(model, folder)
        return model

    def use_stored_shape(self, model, folder):
        """A loaded model keeps the base width and constructor settings (e.g. SphereNet's image
        size) it was built with; a different flag says so in one line, and the data provider
        follows the model's image size."""
        a = self.args
        if a.base_width != model.base_width:
            self.logger.warning('BASE_WIDTH %s differs from the %s stored in %s: using %s, the width '
                                'the model was built with', a.base_width, model.base_width, folder,
                                model.base_width)
        for name, value in model.model_kwargs().items():
            given = getattr(a, name, value)
            if given != value:
                self.logger.warning('%s %s differs from the %s stored in %s: using %s, what the model '
                                    'was built for', name.upper(), given, value, folder, value)
                setattr(a, name, value)
                if hasattr(self.data, name):
                    setattr(self.data, name, value)

    def manager(self, model, task, train_loader, val_loader, net=None):
        """The Manager of `task`, with the loss and evaluator of its head kind."""
        reduce = self.dist.all_reduce_sum if self.dist is not None else None
        record = model.tasks[task - 1]
        head = record.get('head', 'linear')
        weights = getattr(self.data, 'class_weights', lambda name: None)(record['name'])
        if weights is not None:
            self.logger.info('task %r: class-weighted cross-entropy, weights %s', record['name'],
                             ' '.join(f'{w:.4f}' for w in weights.tolist()))
        objective = objective_for(head, record, class_weight=weights,
                                  restart=getattr(self.args, 'angle_lambda_restart', False))
        skipped = getattr(self.data, 'skipped_pairs', 0) if head == 'angle' else 0
        if skipped:
            self.logger.info('task %r: %d verification pairs skipped (an image is missing)', record['name'], skipped)
        if getattr(objective, 'step', 0):
            self.logger.info('task %r: AngleLoss continues at step %d (lambda %.2f)', record['name'],
                             objective.step, angle_lambda(objective.step))
        per_rank_norms = self.dist is not None and not getattr(self.args, 'sync_bn', True)
        return Manager(model, task, self.device, train_loader, val_loader, self.logger,
                       objective=objective, net=net, reduce=reduce, show_progress=self.is_main,
                       amp=getattr(self.args, 'amp', None),
                       channels_last=getattr(self.args, 'channels_last', False),
                       after_epoch=self.dist.broadcast_norm_statistics if per_rank_norms else None,
                       train_bn=train_bn(self.args))

    def wrap(self, model):
        """What trains: the DDP wrapper when distributed, else the model itself; compiled with
        --compile (torch.compile of the forward and its backward)."""
        net = self.dist.wrap(model) if self.dist is not None else model
        if getattr(self.args, 'compile', False):
            net = torch.compile(net)
        return net

    def seed_epoch(self, loader, epoch):
        """Data order and augmentation depend only on (seed, epoch) and the rank: resume is exact."""
        seed_loader_epoch(loader, self.args.seed, epoch)

    def log_epoch(self, model, task, phase, epoch, train, val, lrs):
        stats = ownership_stats(model, task)
        std = f' ± {100 * val["accuracy_std"]:.2f}' if 'accuracy_std' in val else ''  # LFW folds
        # one short line per epoch (everything else of the epoch is in log.jsonl)
        self.logger.info('%s task %d epoch %d | train %.4f %.2f%% | val %.4f %.2f%%%s | lr %g mask %g '
                         '| owned %.4f free %.4f picked %.4f', phase, task, epoch, train['loss'],
                         100 * train['accuracy'], val['loss'], 100 * val['accuracy'], std, lrs['lr'],
                         lrs['lr_mask'], stats['owned_fraction'], stats['free_fraction'],
                         stats['picked_fraction'])
        if self.is_main:
            append_jsonl(os.path.join(self.args.save_folder, 'log.jsonl'),
                         {'phase': phase, 'run': self.run_id, 'task': task, 'epoch': epoch, 'time': time.time(),
                          'train': train, 'val': val, 'lr': lrs, **stats})


def _relative(path, start):
    """`path` relative to `start` (the stage's own folder): a signature that names its input this
    way still matches after the whole run folder moved (and the input's checkpoint id, also in the
    signature, still says whether it is the same file)."""
    if not path:
        return None
    if not start:
        return os.path.normpath(path)
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start))


def file_identity(path):
    """A cheap identity of an input file that is not a checkpoint of ours (pretrained weights):
    its name, size and modification time, not where the run or the file is."""
    if not path:
        return None
    stat = os.stat(path)
    return {'name': os.path.basename(path), 'size': stat.st_size, 'mtime': int(stat.st_mtime)}


def set_task_record(model, task, **fields):
    model.tasks[task - 1].update(fields)


def run_epochs(ctx, phase, model, task, manager, sgd, adam, schedule, selection, signature,
               pruner=None, on_fresh=None, on_best=None, head_opt=None):
    """The epoch loop of every phase: LR schedule, selection, resume. Returns epochs run.

    Before an epoch the schedule gives the LRs, after it the schedule and the selection observe
    the validation result. A selection that keeps the best epoch hands it to `on_best` when it
    happens (ctx.keep_best: in memory, and in the resume state), so a resumed stage selects
    exactly what an uninterrupted one selects. `head_opt`: the head's own optimizer
    (--lr_classifier), decayed with the weights' LR.
    """
    start, step = 0, 0
    resume = ctx.load_resume(signature)
    if resume is not None:
        model.load_state_dict(resume['model'])
        ctx.best = resume.get('best')
        if pruner is not None:
            for _, layer in model.masked_layers():
                layer.refresh_ownership()
            pruner.load_state_dict(resume['pruner'])
        sgd.load_state_dict(resume['sgd'])
        if adam is not None:
            adam.load_state_dict(resume['adam'])
        if head_opt is not None:
            head_opt.load_state_dict(resume['head_opt'])
        schedule.load_state_dict(resume['schedule'])
        selection.load_state_dict(resume['selection'])
        manager.objective.load_state_dict(resume.get('objective') or {})
        if resume.get('objective'):  # what train_epoch would have recorded in the task table
            set_task_record(model, task, objective_state=resume['objective'])
        start, step = resume['epoch'], resume['step']
    elif on_fresh is not None:
        on_fresh()

    epoch = start
    while not (schedule.finished(epoch) or selection.finished()):
        lr, lr_mask = schedule.lrs(epoch)
        set_lr(sgd, lr)
        set_lr(adam, lr_mask)
        lrs = {'lr': lr, 'lr_mask': lr_mask if adam is not None else 0.0}
        if head_opt is not None:
            lrs['lr_classifier'] = head_lr(ctx.args, lr, schedule.base_lr)
            set_lr(head_opt, lrs['lr_classifier'])
        ctx.seed_epoch(manager.train_loader, epoch)
        train, step = manager.train_epoch(epoch, [sgd, adam, head_opt], pruner=pruner, step=step)
        if pruner is not None and epoch == schedule.epochs - 1:
            pruner.finalize()  # a stage shorter than the interval still ends at s_f
        if pruner is not None:
            pruner.before_validation()   # --release_zeroing validation: released weights become 0
        val = manager.validate()
        ctx.log_epoch(model, task, phase, epoch, train, val, lrs)
        schedule.observe(val['accuracy'])
        if selection.observe(epoch, train, val) and selection.saves_each_best:
            on_best(selection)
        epoch += 1
        if not (schedule.finished(epoch) or selection.finished()):
            ctx.save_resume(model, signature=signature, epoch=epoch, step=step, sgd=sgd.state_dict(),
                            adam=adam.state_dict() if adam is not None else None,
                            head_opt=head_opt.state_dict() if head_opt is not None else None,
                            schedule=schedule.state_dict(), selection=selection.state_dict(),
                            pruner=pruner.state_dict() if pruner is not None else None,
                            objective=manager.objective.state_dict())
    return epoch - start
