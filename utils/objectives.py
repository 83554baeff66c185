"""Loss and evaluation of a task, by the kind of its head (the task table records the kind).

An objective gives the training loss and the number of correct predictions of a batch; both
stay on the device (the Manager reads them once per epoch). An objective with an `evaluate`
method replaces the Manager's batch-by-batch accuracy (face verification: the LFW protocol).
An objective with state (AngleLoss's iteration counter) exposes state_dict/load_state_dict:
the state goes into the resume state and into the task table of every saved checkpoint, so the
next stage continues where this one stopped.

  linear  Classification: cross-entropy (optionally class-weighted, spec §6.3) and top-1
  angle   AngularMargin: SphereFace's AngleLoss with m = 4 (spec §5.4), LFW verification
"""
import torch.nn.functional as F

from models.angle import angle_lambda, angle_loss


class Classification:
    """Cross-entropy and top-1 accuracy (experiments 1 and 2; experiment 3's classification tasks).

    class_weight: (C,) tensor on the device for a weighted cross-entropy (PyTorch's weighted mean),
    used for training and validation loss alike (the expression task, spec §6.3)."""

    def __init__(self, class_weight=None):
        self.class_weight = class_weight

    def loss(self, output, targets):
        return F.cross_entropy(output, targets, weight=self.class_weight)

    def correct(self, output, targets):
        """Number of top-1 hits as a 0-d tensor (no host sync)."""
        return (output.argmax(1) == targets).sum()

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class AngularMargin(Classification):
    """AngleLoss (spec §5.4) on the (cos θ·|x|, φ·|x|) pair of an AngleLinear head.

    λ = max(5, 1500 / (1 + 0.1·step)) anneals from a softmax-like loss to the full margin. The
    original counted `step` per process, so λ restarted at 1500 in every pruning stage (spec §12
    item 34); here `step` is the task's global training step, carried from stage to stage in the
    task table (restart=True reproduces the original). Training accuracy is the identity top-1 of
    cos θ·|x| (the original reported none). Validation is the verification protocol, given by the
    data provider's evaluator (`evaluate`)."""

    def __init__(self, step=0, restart=False):
        super().__init__()
        self.step = 0 if restart else int(step)

    def loss(self, output, targets):
        lam = angle_lambda(self.step)   # a host-side number: no sync
        self.step += 1
        return angle_loss(output, targets, lam)

    def correct(self, output, targets):
        return (output[0].argmax(1) == targets).sum()

    def evaluate(self, model, task, loader, device, progress):
        """The LFW protocol over a loader of (image1, image2, same) batches (spec §6.3)."""
        from .verification import evaluate_verification  # the face data side, imported on use
        return evaluate_verification(model, task, loader, device, progress=progress)

    def state_dict(self):
        return {'step': self.step}

    def load_state_dict(self, state):
        self.step = int(state.get('step', 0))


OBJECTIVES = {'linear': Classification, 'angle': AngularMargin}


def objective_for(head_kind, task_record=None, class_weight=None, restart=False):
    """The objective of a head kind ('linear' or 'angle') for a task whose table entry is
    `task_record` (where an angle task's global step is kept between stages)."""
    if head_kind == 'angle':
        step = (task_record or {}).get('objective_state', {}).get('step', 0)
        return AngularMargin(step=step, restart=restart)
    if head_kind not in OBJECTIVES:
        raise ValueError(f'unknown head kind {head_kind!r}; choose one of {", ".join(OBJECTIVES)}')
    return Classification(class_weight=class_weight)

