"""Multi-process training under torchrun (DistributedDataParallel); None when not launched so.

    torchrun --standalone --nproc_per_node=N CPG_cifar100_main.py ... --batch_size B

Every rank holds the whole model and trains on its 1/N of each global batch of B (a
DistributedSampler shard of B // N per step: utils.data.build_train_loader). What keeps the ranks equal to
one process with batch B (weights within float tolerance):

  * DDP averages the gradients of the trained parameters (shared weights, pick scores, biases,
    norms, head) over ranks; the layers' gradient gating runs inside autograd, before DDP's hooks;
  * BatchNorm uses the statistics of the global batch (models/dist_norm.py);
  * ownership masks: the pruner decides on every rank from identical weights, then rank 0's owner
    masks are broadcast (broadcast_owners), so they are identical on every rank by construction;
    pick masks are derived from pick scores that receive the same averaged gradients everywhere;
  * train metrics are summed over ranks (all_reduce_sum); validation runs on the full test split
    on every rank and is NOT reduced (each rank already has the global answer);
  * only rank 0 (is_main) writes checkpoints, records and logs (the callers check is_main).

Backend: nccl with one GPU per rank (cuda:LOCAL_RANK) when CUDA is there, else gloo on CPU.
"""
import logging
import os

import torch
import torch.distributed as dist

# RankSeededSampler lives with the shared loader builder (utils/data.py); re-exported here
from .data import RankSeededSampler  # noqa: F401
from .errors import CPGError


class Distributed:
    """Process-group state of one rank; only rank 0 writes checkpoints, records and logs."""

    def __init__(self, rank, local_rank, world_size, device, backend):
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.device = torch.device(device)
        self.backend = backend
        self.is_main = rank == 0
        self.owner_mismatches = 0  # owner entries a rank decided differently from rank 0 (expect 0)

    @classmethod
    def from_env(cls, device='auto'):
        """Join the process group torchrun describes (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*).

        Returns None for a plain single-process run. `device` is the --device flag: 'auto' or
        'cuda...' use GPU LOCAL_RANK (nccl), 'cpu' runs every rank on CPU (gloo).
        """
        world_size = int(os.environ.get('WORLD_SIZE', '1'))
        if world_size <= 1:
            return None
        if 'RANK' not in os.environ:
            raise CPGError(f'WORLD_SIZE={world_size} but RANK is not set; launch with torchrun')
        rank = int(os.environ['RANK'])
        local_rank = int(os.environ.get('LOCAL_RANK', rank))
        if device == 'auto':
            use_cuda = torch.cuda.is_available()
        else:
            use_cuda = torch.device(device).type == 'cuda'
        if use_cuda:
            if not torch.cuda.is_available():
                raise CPGError(f'--device {device} asked for CUDA but none is available; '
                               f'use --device cpu or auto')
            if local_rank >= torch.cuda.device_count():
                raise CPGError(f'rank {rank} wants GPU {local_rank} but only '
                               f'{torch.cuda.device_count()} are visible; lower --nproc_per_node')
            torch.cuda.set_device(local_rank)
            device, backend = torch.device('cuda', local_rank), 'nccl'
        else:
            device, backend = torch.device('cpu'), 'gloo'
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        return cls(rank, local_rank, world_size, device, backend)

    # ----- collectives ------------------------------------------------------------------------
    def _on_backend(self, tensor):
        """The tensor itself, or a copy on this rank's GPU when nccl needs one."""
        if self.backend == 'nccl' and tensor.device.type != 'cuda':
            return tensor.to(self.device)
        return tensor

    def _broadcast_(self, tensor, src=0):
        """In-place broadcast from `src` of any tensor (device / dtype adapted as needed)."""
        work = self._on_backend(tensor)
        if work.dtype not in (torch.uint8, torch.int32, torch.int64, torch.float16,
                              torch.bfloat16, torch.float32, torch.float64):
            work = work.to(torch.int32 if not work.is_floating_point() else torch.float32)
        dist.broadcast(work, src=src)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def all_reduce_sum(self, tensor):
        """SUM of `tensor` over ranks (in place, returned): for TRAIN metrics, whose batches are
        split over ranks. Validation runs the whole split on every rank: never reduce it."""
        work = self._on_backend(tensor)
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def barrier(self):
        if self.backend == 'nccl':
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()

    # ----- model --------------------------------------------------------------------------------
    def wrap(self, model):
        """DDP over the parameters that require grad now (the phase froze all others).

        Buffers are not broadcast each step: owner masks and packed picks are kept identical by
        construction and BatchNorm running statistics are computed from global-batch statistics.
        DDP's constructor broadcasts rank 0's parameters, so every rank starts from the same
        weights (every rank built or loaded the same model anyway).
        """
        if not any(p.requires_grad for p in model.parameters()):
            return model  # nothing to synchronise (DDP refuses such a module)
        import inspect

        from torch.nn.parallel import DistributedDataParallel
        # no buffer sync before every forward (the flag was renamed in newer torch)
        no_sync = ('forward_sync_buffers' if 'forward_sync_buffers' in
                   inspect.signature(DistributedDataParallel.__init__).parameters else 'broadcast_buffers')
        return DistributedDataParallel(
            model, device_ids=[self.local_rank] if self.backend == 'nccl' else None,
            find_unused_parameters=False, **{no_sync: False})

    @torch.no_grad()
    def broadcast_norm_statistics(self, model):
        """--no-sync_bn: each rank's BatchNorm statistics come from its own half of the batches;
        after an epoch rank 0's are broadcast, so that every rank validates, selects and saves
        the same model (one flat collective for all of them)."""
        buffers = [b for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for b in (m.running_mean, m.running_var) if b is not None]
        if buffers:
            flat = self._broadcast_(torch.cat([b.reshape(-1) for b in buffers]))
            for buffer, value in zip(buffers, flat.split([b.numel() for b in buffers])):
                buffer.copy_(value.view_as(buffer))

    @torch.no_grad()
    def broadcast_owners(self, pruner):
        """GradualPruner.after_update: make every rank's owner masks rank 0's.

        All ranks prune from identical weights, so they normally decide identically; rank 0's masks
        are broadcast anyway (one collective for all layers), and in the unexpected case that a
        rank decided differently, rank 0's weights and momentum of that layer are broadcast too.
        Released entries (owner 0) hold zero weight and zero momentum on every rank.
        """
        layers, optimizer = pruner.layers, getattr(pruner, 'optimizer', None)
        if not layers:
            return
        local = torch.cat([layer.owner.reshape(-1) for layer in layers])
        flat = self._broadcast_(local.clone())
        sizes = [layer.owner.numel() for layer in layers]
        mismatch = torch.stack([d.sum() for d in (flat != local).split(sizes)]).to(torch.int64)
        self.all_reduce_sum(mismatch)  # every rank learns which layers need rank 0's weights
        differing = int(mismatch.sum())
        self.owner_mismatches += differing
        if differing and self.is_main:
            logging.getLogger('CPG').warning(
                'pruning decided differently on another rank for %d entries; using rank 0\'s',
                differing)
        for layer, owner, bad in zip(layers, flat.split(sizes), mismatch.tolist()):
            layer.owner.copy_(owner.view_as(layer.owner))
            momentum = _momentum_buffer(optimizer, layer.weight)
            if bad:
                self._broadcast_(layer.weight.data)
                if momentum is not None:
                    self._broadcast_(momentum)
            free = layer.owner == 0
            layer.weight.masked_fill_(free, 0.0)
            if momentum is not None:
                momentum.masked_fill_(free, 0.0)
            layer.refresh_ownership()


def _momentum_buffer(optimizer, param):
    if optimizer is None:
        return None
    return optimizer.state.get(param, {}).get('momentum_buffer')
