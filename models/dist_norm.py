"""BatchNorm2d whose training statistics span every rank of a torch.distributed run.

nn.SyncBatchNorm only runs on CUDA; this one works on any backend (gloo on CPU for the tests,
nccl on GPUs). Under DistributedDataParallel with per-rank batches of B/W samples it normalizes
with the statistics of the whole global batch of B, so training matches a single-process run
with batch B (within float tolerance), forward and backward:

  * each rank computes its batch mean and biased variance (float32, two-pass: no cancellation);
  * [n_r * mean_r, n_r * var_r + n_r * mean_r^2, n_r] are summed over ranks in float64 with the
    DIFFERENTIABLE all-reduce of torch.distributed.nn, whose backward all-reduces the incoming
    gradients: each rank's input gradient includes the other ranks' losses through the shared
    statistics, exactly as in the single-process graph;
  * running_mean / running_var (unbiased) / num_batches_tracked are updated from the global
    statistics, so they stay identical on every rank (DDP need not broadcast buffers).

Outside distributed training (evaluation, one process) it is exactly nn.BatchNorm2d: same
forward, same state-dict keys, so checkpoints move freely between the two.
"""
import torch
import torch.distributed as dist
import torch.nn as nn


GLOBAL_STATISTICS = True   # False (--no-sync_bn): each rank normalises over its own batch


def set_global_statistics(on):
    """--sync_bn: under DDP, normalise over the global batch (default) or each rank's own."""
    global GLOBAL_STATISTICS
    GLOBAL_STATISTICS = bool(on)


def _world_size():
    if not (GLOBAL_STATISTICS and dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _all_reduce_sum(tensor):
    """Differentiable SUM all-reduce (backward: SUM all-reduce of the gradient)."""
    from torch.distributed import _functional_collectives as funcol
    if hasattr(funcol, 'all_reduce_backward'):  # newer torch: functional collectives have autograd
        return funcol.all_reduce(tensor, 'sum', dist.group.WORLD)
    from torch.distributed.nn.functional import all_reduce  # older torch (deprecated later)
    return all_reduce(tensor, op=dist.ReduceOp.SUM)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that, in training mode under a process group of 2+ ranks, normalizes with
    the statistics of the global batch (all ranks together)."""

    def forward(self, x):
        if not self.training or _world_size() <= 1:
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        xf = x.float()
        count = xf.numel() // channels
        if count > 0:
            var_r, mean_r = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
            # float64 for the cross-rank combination, so E[x^2] - E[x]^2 loses nothing
            n_r = float(count)
            mean64, var64 = mean_r.double(), var_r.double()
            local = torch.cat([mean64 * n_r, var64 * n_r + mean64 * mean64 * n_r,
                               mean64.new_full((1,), n_r)])
        else:  # an empty batch still joins the collectives, forward and backward (same graph)
            zeros = xf.sum(dim=(0, 2, 3)).double()
            local = torch.cat([zeros, zeros, zeros.new_zeros(1)])
        total = _all_reduce_sum(local)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean * mean).clamp_min(0.0)

        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())

        invstd = torch.rsqrt(var + self.eps).float()
        mean = mean.float()
        scale = invstd if self.weight is None else invstd * self.weight.float()
        shape = (1, channels, 1, 1)
        y = (xf - mean.view(shape)) * scale.view(shape)
        if self.bias is not None:
            y = y + self.bias.float().view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean, var, n):
        """As nn.BatchNorm2d: momentum (or cumulative average when momentum is None), unbiased var."""
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        if self.running_mean is None:
            return
        unbiased = var * (n / (n - 1.0).clamp_min(1.0))  # n stays a tensor: no device sync
        self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
