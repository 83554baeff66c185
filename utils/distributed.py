"""Multi-process training under torchrun (DistributedDataParallel); None when not launched so."""
import os


class Distributed:
    """Process-group state of one rank; only rank 0 writes checkpoints, records and logs."""

    @classmethod
    def from_env(cls):
        if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
            return None
        return cls()
