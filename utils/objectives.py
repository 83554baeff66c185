"""Loss and evaluation of a task, by the kind of its head (the task table records the kind).

An objective gives the training loss and the number of correct predictions of a batch; both
stay on the device (the Manager reads them once per epoch). Experiment 3 adds the angular-margin
head, its loss and the face-verification evaluator here.
"""
import torch.nn as nn


class Classification:
    """Cross-entropy and top-1 accuracy (experiments 1 and 2)."""

    def __init__(self):
        self.criterion = nn.CrossEntropyLoss()

    def loss(self, output, targets):
        return self.criterion(output, targets)

    def correct(self, output, targets):
        """Number of top-1 hits as a 0-d tensor (no host sync)."""
        return (output.argmax(1) == targets).sum()


OBJECTIVES = {'linear': Classification}


def objective_for(head_kind):
    """The objective of a head kind, e.g. 'linear'."""
    return OBJECTIVES[head_kind]()
