"""Learning-rate schedules of a training stage, chosen per experiment (`--lr_schedule`).

  milestones  experiment 1 (spec §3.1): fixed epochs; the weights' LR x factor at each weight
              milestone, the mask LR x its own factor at each mask milestone.
  plateau     experiment 2 (spec §8.1): after `patience` epochs without a new best validation
              accuracy the weights' LR x0.1 and, at the first decay only, the mask LR x0.2; the
              stage stops once 3 decays have happened, or after --epochs.
  constant    pruning stages: no decay inside a stage.

A schedule answers lrs(epoch) before an epoch, observe(accuracy) after it and finished(epoch)
before the next one; its state_dict is part of the resume state, so a resumed stage decays at
exactly the epochs an uninterrupted one does.
"""


def lr_at(base, epoch, milestones, factors):
    """LR after `epoch` completed epochs: base times the factor of every milestone passed."""
    lr = base
    for milestone, factor in zip(milestones, factors):
        if epoch >= milestone:
            lr *= factor
    return lr


class ConstantSchedule:
    """The same LRs for every epoch of a stage (pruning: spec §3.2)."""

    def __init__(self, lr, lr_mask, epochs):
        self.lr, self.lr_mask, self.epochs = lr, lr_mask, epochs
        self.base_lr = lr   # the weights' LR before any decay (the head's LR follows its ratio)

    def lrs(self, epoch):
        return self.lr, self.lr_mask

    def observe(self, accuracy):
        pass

    def finished(self, epoch):
        return epoch >= self.epochs

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class MilestoneSchedule(ConstantSchedule):
    """Fixed epochs with step decays (experiment 1)."""

    def __init__(self, lr, lr_mask, epochs, milestones, factor, mask_milestones, mask_factors):
        super().__init__(lr, lr_mask, epochs)
        self.milestones, self.factors = list(milestones), [factor] * len(milestones)
        self.mask_milestones, self.mask_factors = list(mask_milestones), list(mask_factors)

    def lrs(self, epoch):
        return (lr_at(self.lr, epoch, self.milestones, self.factors),
                lr_at(self.lr_mask, epoch, self.mask_milestones, self.mask_factors))


class PlateauSchedule(ConstantSchedule):
    """Decay on a validation plateau, stop after `max_decays` decays (experiment 2, spec §8.1)."""

    def __init__(self, lr, lr_mask, epochs, patience=5, factor=0.1, mask_factor=0.2, max_decays=3):
        super().__init__(lr, lr_mask, epochs)
        self.patience, self.factor, self.mask_factor, self.max_decays = patience, factor, mask_factor, max_decays
        self.best, self.stale, self.decays = None, 0, 0

    def lrs(self, epoch):
        return self.lr, self.lr_mask

    def observe(self, accuracy):
        if self.best is None or accuracy > self.best:
            self.best, self.stale = accuracy, 0
            return
        self.stale += 1
        if self.stale >= self.patience:
            self.lr *= self.factor
            if self.decays == 0:  # the mask LR decays once, at the first plateau
                self.lr_mask *= self.mask_factor
            self.decays += 1
            self.stale = 0

    def finished(self, epoch):
        # "stop once 3 decays have happened", checked before the following epoch
        return epoch >= self.epochs or self.decays >= self.max_decays

    def state_dict(self):
        return {'lr': self.lr, 'lr_mask': self.lr_mask, 'best': self.best, 'stale': self.stale,
                'decays': self.decays}

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


def build_schedule(args, lr, lr_mask, epochs, owns_weights=True, kind=None):
    """The schedule `--lr_schedule` names (or `kind`), for a picking stage (Phase A, retrain).

    Milestones: a mask factor of 0 (experiment 1's "mask LR x0 after 70%") applies only when the
    task owns weights; a task that owns none keeps learning its pick (spec §3.1 step 11).
    """
    kind = kind or args.lr_schedule
    if kind == 'plateau':
        return PlateauSchedule(lr, lr_mask, epochs, patience=args.patience, factor=args.lr_decay_factor,
                               mask_factor=args.plateau_mask_factor, max_decays=args.max_decays)
    mask_factors = [f if (f != 0 or owns_weights) else 1.0 for f in args.mask_lr_decay_factors]
    return MilestoneSchedule(lr, lr_mask, epochs, args.lr_decay_epochs, args.lr_decay_factor,
                             args.mask_lr_decay_epochs, mask_factors)
