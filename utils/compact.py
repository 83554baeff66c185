"""The deployable file's format: owner ids bit-packed in the fewest bits that hold the task count.

Both pack what is saved: frozen_state_dict turns the float pick of the task in training into its
packed binary pick (every checkpoint), compact_state_dict also packs the owner ids (the export).

Training checkpoints keep one integer per shared weight (uint8, int16 past 255 tasks), which the
layers index directly. The exported multi-task file (tools/export.py) stores each `<layer>.owner`
as `<layer>.owner_packed` instead: b = ceil(log2(T+1)) bits per entry, T the number of tasks, and
records b as the checkpoint's `owner_bits`. With the finished tasks' pick bits (over earlier tasks'
entries only) a T-task file then costs at most about 4 + T/8 bytes per shared weight plus the
per-task norms, biases and heads (spec §12 item 4). model_from_checkpoint expands the ids again
(expand_compact_state), so an exported file loads wherever a checkpoint loads.

Bit layout: entry i's bit j (least significant first) is bit i*b + j of one little-endian bit
stream over the row-major entries; the stream is stored 8 bits per byte by models.layers.pack_bits.
"""
import math

import torch

from models.layers import PICK_THRESHOLD, pack_bits, unpack_bits

from .errors import CPGError

PACKED_SUFFIX = '.owner_packed'
MAX_OWNER_BITS = 16


def owner_bits(num_tasks):
    """Fewest bits that hold task ids 0..num_tasks: ceil(log2(T+1)), at least 1."""
    return max(1, int(num_tasks).bit_length())


def pack_owner_ids(owner, bits):
    """Integer tensor (any shape, values 0..2**bits-1) -> uint8 tensor of ceil(numel*bits/8) bytes."""
    if not 1 <= bits <= MAX_OWNER_BITS:
        raise ValueError(f'owner ids take 1..{MAX_OWNER_BITS} bits, got {bits}')
    ids = owner.reshape(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 1 << bits):
        raise ValueError(f'owner ids {int(ids.min())}..{int(ids.max())} do not fit in {bits} bits')
    ids = ids.to(torch.int32)
    # (n, bits) bit planes, one Python step per bit (at most 16), never per entry
    planes = torch.stack([torch.bitwise_and(ids >> j, 1) for j in range(bits)], dim=1)
    return pack_bits(planes.bool())


def unpack_owner_ids(packed, shape, bits, dtype):
    """Inverse of pack_owner_ids: owner ids of `shape` and `dtype`, on packed's device."""
    if not 1 <= bits <= MAX_OWNER_BITS:
        raise ValueError(f'owner ids take 1..{MAX_OWNER_BITS} bits, got {bits}')
    n = math.prod(shape)
    if packed.numel() != math.ceil(n * bits / 8):
        raise ValueError(f'{packed.numel()} packed bytes cannot hold {n} owner ids of {bits} bits '
                         f'({math.ceil(n * bits / 8)} bytes expected)')
    planes = unpack_bits(packed, n * bits).view(n, bits)  # (n, bits) bool, least significant first
    ids = torch.zeros(n, dtype=torch.int32, device=packed.device)
    for j in range(bits):
        ids |= planes[:, j].to(torch.int32) << j
    return ids.to(dtype).view(shape)


def frozen_state_dict(model):
    """State dict with the in-training task's float pick replaced by its packed binary pick."""
    state = model.state_dict()
    for name, layer in model.masked_layers():
        score = state.pop(f'{name}.pick_score', None)
        if score is None or layer._phase is None:
            continue
        task = layer._phase['task']
        out_f, in_f = layer.task_shapes[task]
        owner = layer.owner[:out_f, :in_f]
        old = (owner >= 1) & (owner < task)
        state[f'{name}.pick_bits_{task}'] = pack_bits((score[:out_f, :in_f] > PICK_THRESHOLD)[old])
    return state


def compact_state_dict(model):
    """The frozen state dict (packed picks) with every `<layer>.owner` bit-packed as
    `<layer>.owner_packed`, owner_bits(len(model.tasks)) bits per entry; order kept."""
    bits = owner_bits(len(model.tasks))
    owners = {f'{name}.owner' for name, _ in model.masked_layers()}
    return {(key[:-len('.owner')] + PACKED_SUFFIX if key in owners else key):
            (pack_owner_ids(value, bits) if key in owners else value)
            for key, value in frozen_state_dict(model).items()}


def expand_compact_state(ckpt, model, device=None):
    """ckpt['model'] as a normal state dict for `model`: packed owner ids become owner tensors of
    the model's owner dtype, created on the model's device (meta included). A checkpoint without
    packed owners is returned as it is."""
    state = ckpt['model']
    if not any(key.endswith(PACKED_SUFFIX) for key in state):
        return state
    bits = ckpt.get('owner_bits')
    if not isinstance(bits, int) or not 1 <= bits <= MAX_OWNER_BITS:
        raise CPGError(f'checkpoint holds packed owner ids but no valid owner_bits ({bits!r}); '
                       f'export the source checkpoint again with tools/export.py')
    layers = dict(model.masked_layers())
    expanded = {}
    for key, value in state.items():
        name = key[:-len(PACKED_SUFFIX)]
        weight = state.get(f'{name}.weight')
        if not key.endswith(PACKED_SUFFIX) or name not in layers or weight is None:
            expanded[key] = value  # load_state_dict reports anything that does not belong
            continue
        owner = layers[name].owner
        try:
            expanded[f'{name}.owner'] = unpack_owner_ids(value.to(device or owner.device), weight.shape, bits,
                                                         owner.dtype)
        except ValueError as exc:
            raise CPGError(f'checkpoint entry {key} is damaged ({exc}); export it again') from None
    return expanded
