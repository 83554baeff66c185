"""Which epoch of a stage becomes its result, chosen per experiment (`--selection`).

  last  experiment 1 (spec §3.1, §3.2): the last epoch; it counts only if its train accuracy
        exceeds --train_acc_gate (a pruning stage below the gate saves nothing and stops the loop).
  best  experiment 2 (spec §8.1): the epoch with the best validation accuracy, saved when it
        happens. In pruning stages only epochs at whose end the target sparsity is reached
        qualify (epoch number >= --pruning_interval, and always the last one); no gate.

  goal  experiment 3 (spec §9.1): `best`, but in pruning stages an epoch counts only if it beats
        the task's goal - --goal_margin; a stage where none does saves nothing and stops the loop.

Retrain (spec §3.5) is `best` with a starting threshold and a patience. The state is part of the
resume state, so a resumed stage selects exactly what an uninterrupted one selects.

The train-accuracy gate (TrainGate) is --train_acc_gate: a number gates `last` only (the paper:
train accuracy > gate, in Phase A and the pruning stages); relative:D gates the pruning stages of
every rule (train accuracy >= the task's Phase A train accuracy - D) and not Phase A, which then
accepts on its accuracy goal alone. A task under the must-prune rule is not gated (spec §3.3).
"""
from .recipes import relative_margin


class TrainGate:
    """A stage counts only if its train accuracy passes: > threshold (absolute, the paper) or
    >= threshold (relative: the Phase A train accuracy less a margin)."""

    def __init__(self, threshold, inclusive=False, text=None):
        self.threshold, self.inclusive = threshold, inclusive
        self.text = text or f'gate {threshold}'

    def passes(self, train_accuracy):
        if self.inclusive:
            return train_accuracy >= self.threshold
        return train_accuracy > self.threshold

    def __str__(self):
        return self.text


def _gate(gate):
    """A TrainGate from a number (the absolute gate), a TrainGate, or None (no gate)."""
    if gate is None or isinstance(gate, TrainGate):
        return gate
    return TrainGate(float(gate))


class LastEpoch:
    """The last epoch's result, gated on its train accuracy."""
    saves_each_best = False

    def __init__(self, gate):
        self.gate = _gate(gate)
        self.train = self.val = self.epoch = None

    def observe(self, epoch, train, val):
        """Record an epoch; returns True when it is a new result to save now (never: the stage
        saves its last epoch at the end)."""
        self.epoch, self.train, self.val = epoch, train, val
        return False

    def finished(self):
        return False

    @property
    def accuracy(self):
        return None if self.val is None else self.val['accuracy']

    @property
    def train_accuracy(self):
        return None if self.train is None else self.train['accuracy']

    def passes_gate(self):
        """A stage that trained no epoch (a pretrained task, evaluated only) has nothing to gate."""
        return self.train is None or self.gate is None or self.gate.passes(self.train['accuracy'])

    def gate_reason(self):
        """Why a stage that fails passes_gate saved nothing (log and result.json)."""
        below = '<' if self.gate.inclusive else '<='
        return f'train accuracy {self.train_accuracy:.4f} {below} {self.gate}'

    def state_dict(self):
        return {'epoch': self.epoch, 'train': self.train, 'val': self.val}

    def load_state_dict(self, state):
        self.epoch, self.train, self.val = state['epoch'], state['train'], state['val']


class BestEpoch(LastEpoch):
    """The best validation accuracy among qualifying epochs (epoch index >= first_epoch, and the
    last epoch of the stage). `threshold`: a result must beat it (retrain: the pruned model);
    `patience`: stop after that many epochs without a new best (retrain)."""
    saves_each_best = True

    def __init__(self, first_epoch=0, last_epoch=None, threshold=None, patience=None, gate=None):
        super().__init__(gate=gate)
        self.first_epoch, self.last_epoch = first_epoch, last_epoch
        self.threshold, self.patience = threshold, patience
        self.stale, self.improved = 0, False

    def observe(self, epoch, train, val):
        qualifies = epoch >= self.first_epoch or epoch == self.last_epoch
        if not qualifies:
            return False
        best = self.accuracy if self.improved else self.threshold
        if best is None or val['accuracy'] > best:
            self.epoch, self.train, self.val = epoch, train, val
            self.stale, self.improved = 0, True
            return True
        self.stale += 1
        return False

    def finished(self):
        return self.patience is not None and self.stale >= self.patience

    @property
    def best(self):
        """The accuracy to beat: the best result so far, else the threshold."""
        return self.accuracy if self.improved else self.threshold

    def state_dict(self):
        return dict(super().state_dict(), stale=self.stale, improved=self.improved,
                    threshold=self.threshold)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.stale, self.improved, self.threshold = state['stale'], state['improved'], state['threshold']


class BestAboveGoal(BestEpoch):
    """BestEpoch whose results must beat goal - margin; a stage without one saves nothing."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.best_seen = None   # the best qualifying accuracy, saved or not (for the log)

    def observe(self, epoch, train, val):
        if epoch >= self.first_epoch or epoch == self.last_epoch:
            self.best_seen = max(val['accuracy'], self.best_seen or val['accuracy'])
        return super().observe(epoch, train, val)

    def passes_gate(self):
        return self.improved and super().passes_gate()

    def gate_reason(self):
        if self.improved:   # the floor was beaten, the train-accuracy gate was not
            return super().gate_reason()
        return (f'no epoch after the pruning interval beat goal - margin = {self.threshold:.4f} '
                f'(best {self.best_seen})')

    def state_dict(self):
        return dict(super().state_dict(), best_seen=self.best_seen)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.best_seen = state.get('best_seen')


def train_gate(args, phase, reference=None, must_prune=False):
    """The stage's TrainGate or None (this module's docstring); `reference`: the task's Phase A
    train accuracy (relative gate), `must_prune`: the must-prune rule holds the stage."""
    gate = args.train_acc_gate
    margin = relative_margin(gate)
    if must_prune or (margin is not None and (phase != 'prune' or reference is None)):
        return None
    if margin is not None:
        return TrainGate(reference - margin, inclusive=True,
                         text=f'Phase A train accuracy {reference:.4f} - {margin:g}')
    return TrainGate(gate) if args.selection == 'last' else None


def build_selection(args, phase, epochs, goal=None, reference=None, must_prune=False):
    """The rule `--selection` names for Phase A ('finetune') or a pruning stage ('prune');
    `goal`: the task's accuracy goal (selection 'goal' in pruning stages); `reference` and
    `must_prune`: see train_gate (a stage under the must-prune rule keeps no goal floor either)."""
    gate = train_gate(args, phase, reference, must_prune)
    if args.selection == 'last':
        return LastEpoch(gate)
    first = args.pruning_interval - 1 if phase == 'prune' else 0
    if args.selection == 'goal' and phase == 'prune' and not must_prune:
        return BestAboveGoal(first_epoch=first, last_epoch=epochs - 1, threshold=goal - args.goal_margin,
                             gate=gate)
    return BestEpoch(first_epoch=first, last_epoch=epochs - 1, gate=gate)
