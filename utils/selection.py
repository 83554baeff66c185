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
"""


class LastEpoch:
    """The last epoch's result, gated on its train accuracy."""
    saves_each_best = False

    def __init__(self, gate):
        self.gate = gate
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
        return self.train is None or self.train['accuracy'] > self.gate

    def gate_reason(self):
        """Why a stage that fails passes_gate saved nothing (log and result.json)."""
        return f'train accuracy {self.train_accuracy:.4f} <= gate {self.gate}'

    def state_dict(self):
        return {'epoch': self.epoch, 'train': self.train, 'val': self.val}

    def load_state_dict(self, state):
        self.epoch, self.train, self.val = state['epoch'], state['train'], state['val']


class BestEpoch(LastEpoch):
    """The best validation accuracy among qualifying epochs (epoch index >= first_epoch, and the
    last epoch of the stage). `threshold`: a result must beat it (retrain: the pruned model);
    `patience`: stop after that many epochs without a new best (retrain)."""
    saves_each_best = True

    def __init__(self, first_epoch=0, last_epoch=None, threshold=None, patience=None):
        super().__init__(gate=None)
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

    def passes_gate(self):
        return True

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
        return self.improved

    def gate_reason(self):
        return (f'no epoch after the pruning interval beat goal - margin = {self.threshold:.4f} '
                f'(best {self.best_seen})')

    def state_dict(self):
        return dict(super().state_dict(), best_seen=self.best_seen)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.best_seen = state.get('best_seen')


def build_selection(args, phase, epochs, goal=None):
    """The rule `--selection` names for Phase A ('finetune') or a pruning stage ('prune');
    `goal`: the task's accuracy goal (selection 'goal' in pruning stages)."""
    if args.selection == 'last':
        return LastEpoch(args.train_acc_gate)
    first = args.pruning_interval - 1 if phase == 'prune' else 0
    if args.selection == 'goal' and phase == 'prune':
        return BestAboveGoal(first_epoch=first, last_epoch=epochs - 1, threshold=goal - args.goal_margin)
    return BestEpoch(first_epoch=first, last_epoch=epochs - 1)
