"""Manager: trains and validates ONE task of a multi-task model (packnet's Manager, made explicit).

Metrics are accumulated on the device and read once per epoch (and every `log_every` steps for the
progress bar), so the training loop never waits on the device per batch (spec §12 items 5, 23).
"""
import math

import torch
import torch.nn as nn
from tqdm import tqdm

from models.layers import gate_

from .errors import CPGError
from .objectives import Classification


def is_batch_norm(module):
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def task_parameters(model, task, train_weights=True, train_bn=True, train_biases=True, train_head=True):
    """What SGD trains for `task`: shared weights (gated to the task's own entries), the task's
    biases, norms and head. Everything else is frozen, so DDP and the optimizer never see it.
    train_bn / train_biases False: the task's BatchNorm / shared-layer biases stay as they start
    (utils/recipes.py); train_head False: the head has an optimizer of its own."""
    for param in model.parameters():
        param.requires_grad_(False)
    params = []
    for _, layer in model.masked_layers():
        if train_weights:
            params.append(layer.weight)
        if layer.has_bias and train_biases:
            params.append(layer.biases[str(task)])
    for _, module in model.per_task_modules():
        own = module.per_task[str(task)]
        frozen = set() if train_bn else {id(p) for m in own.modules() if is_batch_norm(m)
                                         for p in m.parameters(recurse=False)}
        params += [p for p in own.parameters() if id(p) not in frozen]
    if train_head:
        params += list(model.heads[str(task)].parameters())
    for param in params:
        param.requires_grad_(True)
    for _, layer in model.masked_layers():  # pick scores are trained by their own optimizer
        if layer.pick_score is not None:
            layer.pick_score.requires_grad_(True)
    return params


def build_weight_optimizer(model, task, lr, train_weights=True):
    """SGD, Nesterov momentum 0.9, no built-in weight decay (manual L2 lives in the layers, §3.8)."""
    return torch.optim.SGD(task_parameters(model, task, train_weights), lr=lr, momentum=0.9,
                           nesterov=True, weight_decay=0.0)


def set_lr(optimizer, lr):
    if optimizer is not None:
        for group in optimizer.param_groups:
            group['lr'] = lr


class Manager:
    """train_epoch / validate for task `task`; `net` is what runs forward (the model or its DDP)."""

    def __init__(self, model, task, device, train_loader, val_loader, logger, objective=None,
                 net=None, reduce=None, log_every=50, show_progress=True, amp=None,
                 channels_last=False, after_epoch=None, train_bn=True):
        self.model, self.task, self.device = model, task, torch.device(device)
        self.train_bn = train_bn   # False: BatchNorm in eval mode while training (piggyback, PackNet)
        # amp: None, 'bf16' or 'fp16' (autocast on the device; fp16 adds a GradScaler there)
        self.amp_dtype = {None: None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == 'fp16' else None
        self.channels_last = channels_last
        self.net = net if net is not None else model
        self.train_loader, self.val_loader = train_loader, val_loader
        self.logger = logger
        self.objective = objective or Classification()   # loss and hits of the task's head kind
        self.reduce = reduce or (lambda tensor: tensor)   # all-reduce(sum) of train metrics under DDP
        self.log_every = log_every
        self.show_progress = show_progress
        self.after_epoch = after_epoch   # e.g. rank 0's BatchNorm statistics to every rank

    def _batches(self, loader, desc):
        # disable=None: no bars when stderr is not a terminal (logs, pipes), so that stderr holds
        # only errors there
        return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                    disable=None if self.show_progress else True)

    def train_epoch(self, epoch, optimizers, pruner=None, step=0):
        """One epoch; `step` is the stage's optimizer-step counter (pruning schedule). Returns
        ({'loss', 'accuracy'}, step after the epoch)."""
        self.model.set_task(self.task)
        self.net.train()
        if not self.train_bn:   # normalise with the stored statistics and never update them
            for module in self.model.modules():
                if is_batch_norm(module):
                    module.eval()
        optimizers = [opt for opt in optimizers if opt is not None]
        if self.scaler is not None:  # fp16: the layers must not decay the scaled gradient
            for _, layer in self.model.masked_layers():
                if layer._phase is not None and layer._phase['weight_decay']:
                    layer._phase['deferred_decay'] = layer._phase['weight_decay']
                    layer._phase['weight_decay'] = 0.0
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, correct (on device)
        seen = 0                                                         # samples (known on the host)
        bar = self._batches(self.train_loader, f'train task {self.task} ep {epoch}')
        for i, (images, targets) in enumerate(bar):
            images, targets = self._to_device(images, targets)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                output = self.net(images)
                loss = self.objective.loss(output, targets)
            if self.scaler is None:
                loss.backward()
                for opt in optimizers:
                    opt.step()
            else:
                self._scaled_step(loss, optimizers)
            if pruner is not None:
                pruner.step(step)
            step += 1
            with torch.no_grad():
                n = targets.numel()
                sums += torch.stack([loss.detach().double() * n,
                                     self.objective.correct(output, targets).double()])
                seen += n
            if self.show_progress and (i + 1) % self.log_every == 0:  # the only sync, every N steps
                loss_sum, correct = sums.tolist()
                self._check_finite(loss_sum, epoch, optimizers)
                bar.set_postfix(loss=f'{loss_sum / seen:.3f}', acc=f'{correct / seen:.3f}')
        if self.after_epoch is not None:
            self.after_epoch(self.model)
        state = self.objective.state_dict()
        if state:  # e.g. AngleLoss's global step: saved with the task, continued by the next stage
            self.model.tasks[self.task - 1]['objective_state'] = state
        totals = torch.cat([sums, sums.new_tensor([seen])])
        loss_sum, correct, seen = self.reduce(totals).tolist()
        self._check_finite(loss_sum, epoch, optimizers)
        return {'loss': loss_sum / max(seen, 1), 'accuracy': correct / max(seen, 1)}, step

    def _check_finite(self, loss_sum, epoch, optimizers):
        """A NaN/inf loss anywhere in the epoch poisons the on-device loss sum, so checking the sum
        where it is read anyway costs nothing. The stage stops before anything is saved; earlier
        tasks are safe because the layers' gating zeroes every gradient outside the task."""
        if not math.isfinite(loss_sum):
            lrs = ', '.join(f'{group["lr"]:g}' for opt in optimizers for group in opt.param_groups[:1])
            raise CPGError(f'task {self.task}: the training loss became non-finite ({loss_sum}) in epoch {epoch} '
                           f'(learning rates {lrs}); nothing of this stage was saved and earlier tasks '
                           f'are untouched; lower the learning rate and rerun')

    @torch.no_grad()
    def validate(self, task=None, loader=None):
        """Accuracy of `task` (default: the task in training) with its frozen effective weights."""
        task = self.task if task is None else task
        loader = self.val_loader if loader is None else loader
        if hasattr(self.objective, 'evaluate'):  # e.g. face verification: the LFW protocol
            return self.objective.evaluate(self.model, task, loader, self.device, self._batches)
        self.model.set_task(task)
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        seen = 0
        for images, targets in self._batches(loader, f'eval task {task}'):
            images, targets = self._to_device(images, targets)
            output = self.model(images)
            n = targets.numel()
            sums += torch.stack([self.objective.loss(output, targets).double() * n,
                                 self.objective.correct(output, targets).double()])
            seen += n
        # every rank evaluates the whole split, so nothing is reduced here
        loss_sum, correct = sums.tolist()
        return {'loss': loss_sum / max(seen, 1), 'accuracy': correct / max(seen, 1),
                'correct': int(correct), 'total': int(seen)}

    def _to_device(self, images, targets):
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True)

    def _scaled_step(self, loss, optimizers):
        """fp16: weight decay must meet the unscaled gradient, so the layers defer it to here."""
        self.scaler.scale(loss).backward()
        for opt in optimizers:
            self.scaler.unscale_(opt)
        with torch.no_grad():
            for _, layer in self.model.masked_layers():
                phase, grad = layer._phase, layer.weight.grad
                if phase is None or grad is None:
                    continue
                grad.add_(layer.weight, alpha=phase.get('deferred_decay', 0.0))
                if phase['own_gate'] is not None:
                    gate_(grad, phase['own_gate'])
        for opt in optimizers:
            self.scaler.step(opt)
        self.scaler.update()
