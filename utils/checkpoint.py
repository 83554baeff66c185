"""One checkpoint helper: atomic save, validated load, model rebuild (spec §4.1, improved).

A checkpoint is a dict: architecture + base width + task table (name, classes, raw width
multiplier, accuracy when learned, pruning ratio) + the model state dict + whatever the caller adds
(optimizer states, epoch, RNG, signature for resume). Owner masks are uint8, finished tasks' pick
masks are bit-packed over earlier tasks' entries, and a float pick mask only exists for the task in
training (resume files). A JSON sidecar `<file>.json` holds the same metadata for bash and humans.
"""
import json
import os
import shutil
import uuid

import torch

from models import build_model_with_tasks

from .atomic import DiskFull, _fsync_dir, atomic_write, atomic_write_json, is_disk_full  # noqa: F401
from .compact import compact_state_dict, expand_compact_state, frozen_state_dict, owner_bits  # noqa: F401

from .errors import CPGError

FORMAT = 'cpg-checkpoint-v1'
CHECKPOINT_NAME = 'checkpoint.pth.tar'
RESUME_NAME = 'resume.pth.tar'


def tensor_bytes(obj):
    """Bytes of every tensor inside nested dicts / lists / tuples (a checkpoint's size, nearly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def checkpoint_metadata(model, arch):
    return {'format': FORMAT, 'arch': arch, 'base_width': model.base_width,
            'network_width_multiplier': model.multiplier,
            'model_kwargs': model.model_kwargs(),   # e.g. SphereNet's image_size (its flat size)
            'tasks': [dict(t) for t in model.tasks]}


def save_checkpoint(path, model, arch, frozen=True, model_state=None, meta_extra=None, **extra):
    """Write `path` atomically (temp file, fsync, rename) plus its JSON sidecar; returns bytes.

    frozen=True stores the model as later phases and inference load it (packed picks, no
    optimizer); frozen=False keeps the float pick mask, for resuming the running phase.
    model_state replaces that state dict (the export's packed owners); meta_extra joins the
    metadata. Every file gets a fresh `checkpoint_id` (also in the sidecar): the stages that read
    it put that id in their replay signature, so a result computed from another file is never
    replayed.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = dict(checkpoint_metadata(model, arch), checkpoint_id=uuid.uuid4().hex, **(meta_extra or {}))
    if model_state is None:
        model_state = frozen_state_dict(model) if frozen else model.state_dict()
    state = dict(meta, model=model_state, **extra)
    atomic_write(path, lambda f: torch.save(state, f), size_hint=tensor_bytes(state))
    atomic_write_json(f'{path}.json', meta)
    return os.path.getsize(path)


def save_compact_checkpoint(path, model, arch):
    """Write the deployable file of `model` (atomically, with its JSON sidecar): checkpoint
    metadata plus `owner_bits`, and the compact state dict (utils/compact.py). Returns the bytes."""
    return save_checkpoint(path, model, arch, model_state=compact_state_dict(model),
                           meta_extra={'owner_bits': owner_bits(len(model.tasks))})


def resolve_checkpoint(path):
    """A folder means its checkpoint.pth.tar; a file is taken as is."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    return path


def load_checkpoint(path, map_location='cpu', hint='run the stage that writes it first'):
    """Load and validate a checkpoint dict; one clear CPGError line for every failure."""
    path = resolve_checkpoint(path)
    if not os.path.isfile(path):
        raise CPGError(f'checkpoint not found: {path}; {hint}')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated/corrupt files raise many different types
        raise CPGError(f'cannot read checkpoint {path} (corrupt or incomplete: '
                       f'{type(exc).__name__}); delete it and rerun the stage that wrote it') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
        raise CPGError(f'{path} is not a checkpoint of this repository (format '
                       f'{ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__!r}); '
                       f'use a checkpoint written by CPG_*_main.py')
    return ckpt


def model_from_checkpoint(ckpt, device='cpu'):
    """Rebuild the multi-task model and load its weights, masks, norms and heads.

    The model is built on the meta device and takes the checkpoint's tensors as they are
    (assign): no random init that the load would overwrite (1.7 s for VGG16-BN at width 1.5 on a
    CPU), no second copy; then it moves to `device`."""
    with torch.device('meta'):
        model = build_model_with_tasks(ckpt['arch'], ckpt['base_width'], ckpt['tasks'],
                                       **ckpt.get('model_kwargs', {}))
    for task, saved in zip(model.tasks, ckpt['tasks']):
        task.update(saved)
    try:
        # exported files pack owner ids: unpacked on the CPU, where the state is
        model.load_state_dict(expand_compact_state(ckpt, model, device='cpu'), assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CPGError(f'checkpoint does not match its architecture {ckpt["arch"]!r}: {first}') from None
    model.to(device)
    freeze_float_picks(model)
    return model


def freeze_float_picks(model):
    """A resume file holds the newest task's float pick; outside its phase it must be packed bits,
    or evaluating that task would silently use every earlier weight."""
    task = len(model.tasks)
    for _, layer in model.masked_layers():
        if layer.pick_score is not None and layer._phase is None:
            layer.begin_phase(task, learn_pick=True, fixed_pick=False, weight_decay=0.0)
            layer.end_phase()


def copy_checkpoint(src, dst):
    """Promote a checkpoint (and its sidecar) atomically; a no-op when dst already is src's copy.

    The checkpoint is hard-linked where the file system allows it (a second name for the same
    bytes: nothing is written, and dropping the stage's copy later keeps it), else copied. Files
    are only ever replaced, never written in place, so the two names cannot diverge. The sidecar
    goes last: until it is written, dst's sidecar still names the old file's id, so an
    interrupted promotion is simply done again.
    """
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    src_meta, dst_meta = read_sidecar(src), read_sidecar(dst)
    if (src_meta is not None and dst_meta is not None and os.path.isfile(dst)
            and src_meta.get('checkpoint_id') and src_meta.get('checkpoint_id') == dst_meta.get('checkpoint_id')):
        return False
    for suffix in ('', '.json'):
        if os.path.exists(src + suffix):
            if suffix == '' and _link_into_place(src, dst):
                continue
            with open(src + suffix, 'rb') as source:
                atomic_write(dst + suffix, lambda f: shutil.copyfileobj(source, f, 16 << 20),
                             size_hint=os.path.getsize(src + suffix))
    return True


def _link_into_place(src, dst):
    """dst becomes a hard link to src, atomically (link under a temporary name, then rename);
    False where the file system has no hard links (the caller copies)."""
    tmp = f'{dst}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp'
    try:
        os.link(src, tmp)
    except OSError:
        return False
    os.replace(tmp, dst)
    _fsync_dir(dst)
    return True


def read_sidecar(path):
    """Metadata of a checkpoint without loading tensors (None if absent or unreadable)."""
    path = resolve_checkpoint(path) + '.json'
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def checkpoint_info(path, hint):
    """Metadata of the checkpoint at `path` (a file or a folder), cheaply: the JSON sidecar when
    it is there, else the file itself. Raises one clear CPGError if there is no checkpoint."""
    path = resolve_checkpoint(path)
    if not os.path.isfile(path):
        raise CPGError(f'checkpoint not found: {path}; {hint}')
    meta = read_sidecar(path)
    if meta is None or 'checkpoint_id' not in meta:  # no sidecar: read the file itself
        ckpt = load_checkpoint(path, hint=hint)
        meta = dict(checkpoint_metadata_of(ckpt), checkpoint_id=ckpt.get('checkpoint_id'))
    return meta


def checkpoint_metadata_of(ckpt):
    """The metadata part (what the sidecar holds) of a loaded checkpoint dict."""
    return {k: ckpt[k] for k in ('format', 'arch', 'base_width', 'network_width_multiplier', 'tasks')}
