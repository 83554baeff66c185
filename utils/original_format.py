"""Checkpoints written by the original CPG code (ivclab/CPG) as models of this repository.

The original's `checkpoint-<E>.pth.tar` is a dict (spec §4.1; the same in files its code wrote):
  model_state_dict    shared weights at the widest width; the LAST task's piggymask, BN, biases and
                      PReLU; every head `classifiers.<i>.*` plus a `classifier.*` copy of the active one
  dataset_history     task names in learning order; dataset2num_classes: name -> classes (same order)
  masks               `module.<layer>` -> uint8 owner ids of the weight's shape (0 free, k task k)
  shared_layer_info   task -> its snapshot (spec §2.4). CPG engine: bias, bn_layer_{weight, bias,
                      running_mean, running_var}, prelu_layer_weight (faces), piggymask ({} for task 1),
                      network_width_multiplier = sqrt(raw m). PackNet engine (the original's
                      baselines): conv_bias, fc_bias, bn_layer_*, prelu_layer_weight; no pick, width 1.
Task j ran there as (spec §2.3, §2.6), per weight entry, on its own leading block:
  W_eff = W * ( [M == j] + [1 <= M < j] * [P_j > 5e-3] )      plus task j's BN / biases / PReLU / head.
Here the same numbers become owner ids, task j's pick bit-packed over earlier tasks' entries
(models/layers.py), PerTask modules and heads[j]: OriginalCheckpoint checks every key and shape,
then to_model() builds the model.
"""
import math
import os
import re

import torch
import torch.nn as nn

from models import build_model, build_model_with_tasks
from models.layers import PICK_THRESHOLD, MaskedLinear

from .errors import CPGError

ORIGINAL_KEYS = ('model_state_dict', 'dataset_history', 'dataset2num_classes', 'masks', 'shared_layer_info')
# top-level keys some of the original's files may carry; its entry points never use them
IGNORED_TOP_KEYS = ('num_for_construct', 'optimizer_network_state_dict')
BN_STORE = {'weight': 'bn_layer_weight', 'bias': 'bn_layer_bias',
            'running_mean': 'bn_layer_running_mean', 'running_var': 'bn_layer_running_var'}
CPG_STORE = frozenset(BN_STORE.values()) | {'bias', 'prelu_layer_weight', 'piggymask', 'network_width_multiplier'}
PACKNET_STORE = frozenset(BN_STORE.values()) | {'conv_bias', 'fc_bias', 'prelu_layer_weight'}
CHECKPOINT_PATTERN = re.compile(r'^checkpoint-(\d+)\.pth\.tar$')   # the original's file names (spec §4.6)
STEM_CHANNELS = 64          # out channels of the first conv at the paper's width, all three networks
EMBEDDING = 512             # the face-verification head's embedding (spec §5.3)


class Layout:
    """Where a registered architecture's modules sit in the original's state dict."""

    def __init__(self, arch, probe_key, hint, renames=()):
        self.arch, self.probe_key, self.hint = arch, probe_key, hint
        self.renames = renames   # (original prefix, our prefix)

    def theirs(self, name):
        for theirs, ours in self.renames:
            if name.startswith(ours):
                return theirs + name[len(ours):]
        return name


LAYOUTS = (
    Layout('custom_vgg_cifar100', 'features.0.weight', 'features.<i>.* (VGG16-BN, CIFAR variant)',
           renames=(('features.', 'features_seq.'),)),
    Layout('resnet50', 'layer1.0.conv1.weight', 'conv1/bn1/layer<s>.<b>.* (ResNet-50)'),
    Layout('spherenet20', 'conv1_1.weight', 'conv<s>_<i>/relu<s>_<i>.* (SphereNet20)'),
)


def find_original_checkpoint(folder, epoch=None):
    """The original's file in `folder`: checkpoint-<epoch>.pth.tar, or the highest epoch there
    (the original's own rule, spec §4.6); None when there is none."""
    if not os.path.isdir(folder):
        return None
    found = {int(m.group(1)): name for name in os.listdir(folder)
             if (m := CHECKPOINT_PATTERN.match(name)) and os.path.isfile(os.path.join(folder, name))}
    if epoch is not None:
        return os.path.join(folder, found[epoch]) if epoch in found else None
    return os.path.join(folder, found[max(found)]) if found else None


def read_original(path):
    """The original's checkpoint dict, loaded on the CPU with weights_only=True (its files hold
    only tensors, Parameters, dicts, lists, strings and floats; CUDA tensors land on the CPU)."""
    if not os.path.isfile(path):
        raise CPGError(f'original checkpoint not found: {path}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, a pickle weights_only refuses, ...
        text = str(exc)
        refused = re.search(r'Unsupported global: (GLOBAL [\w.]+)', text)
        if refused:
            raise CPGError(f'cannot read {path} with weights_only=True: it pickles {refused.group(1)}, '
                           "which the original's checkpoints never hold; is it the original's "
                           'checkpoint-<E>.pth.tar?') from None
        first = (text.strip().splitlines() or [''])[0][:160]
        raise CPGError(f'cannot read {path} (truncated, corrupt or not a torch file: '
                       f'{type(exc).__name__}: {first}); copy or download it again') from None


def raw_multiplier(stored, where):
    """The raw width multiplier m whose float square root is `stored` (the original keeps sqrt(m),
    spec §3.6): the shortest decimal that gives exactly that root, so that our int(c * sqrt(m))
    reproduces the original's int(c * stored) channel for channel."""
    try:
        root = float(stored)
    except (TypeError, ValueError):
        raise CPGError(f'{where} is {stored!r}; expected a positive number (the square root of '
                       'the raw width multiplier)') from None
    if not (math.isfinite(root) and root > 0):
        raise CPGError(f'{where} is {stored!r}; expected a positive number')
    square = root * root
    candidates = [round(square, digits) for digits in range(1, 18)]
    candidates += [square, math.nextafter(square, math.inf), math.nextafter(square, 0.0)]
    for m in candidates:
        if m > 0 and math.sqrt(m) == root:
            return m
    raise CPGError(f'{where} is {root!r}, the square root of no float; this repository stores '
                   'the raw multiplier and cannot rebuild that width exactly')


def _plain(mapping):
    """Keys without DataParallel's `module.` prefix."""
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in mapping.items()}


def _tensor(value, where, shape=None, why=''):
    """`value` as a float tensor (a Parameter detached) of `shape`; one CPGError line otherwise."""
    if isinstance(value, nn.Parameter):
        value = value.detach()
    if not isinstance(value, torch.Tensor):
        raise CPGError(f'{where} is a {type(value).__name__}; expected a tensor')
    if not value.is_floating_point():
        raise CPGError(f'{where} has dtype {value.dtype}; expected a float tensor')
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise CPGError(f'{where} has shape {tuple(value.shape)}; expected {tuple(shape)}{why}')
    return value


def _probe(arch, base_width, multiplier, model_kwargs, task=False):
    """A model on the meta device (shapes and names only, no memory)."""
    with torch.device('meta'):
        model = build_model(arch, base_width, multiplier, **model_kwargs)
        if task:
            model.add_task('probe', 2, multiplier)
    return model


class OriginalCheckpoint:
    """One of the original's checkpoint dicts, checked key by key, and converted (to_model)."""

    def __init__(self, ckpt, source):
        self.source = source
        self._check_top(ckpt)
        self.state = _plain(ckpt['model_state_dict'])
        self.masks = _plain(ckpt['masks'])
        self.names = self._task_names(ckpt)
        self.num_classes = self._classes(ckpt['dataset2num_classes'])
        self.stores = self._stores(ckpt['shared_layer_info'])
        self.engine = self._engine()
        self.layout = self._layout()
        probe = _probe(self.layout.arch, 1.0, 1.0, self._probe_kwargs(), task=True)
        self.layers = [name for name, _ in probe.masked_layers()]                  # our names
        self.linear = {name for name, layer in probe.masked_layers() if isinstance(layer, MaskedLinear)}
        self.with_bias = {name for name, layer in probe.masked_layers() if layer.has_bias}
        self.per_task = {name: ('prelu' if isinstance(module.per_task['1'], nn.PReLU) else 'bn')
                         for name, module in probe.per_task_modules()}
        self._check_masks()
        self.heads = self._heads()
        self.ignored = self._account_state()
        self.ignored['top-level'] = [k for k in ckpt if k in IGNORED_TOP_KEYS]
        self.model_kwargs = self._model_kwargs()
        self.base_width, self.multipliers = self._fit_width()
        self.task_table = [{'name': name, 'num_classes': self.num_classes[name], 'multiplier': m,
                            'head': head['kind'], 'picks': self.engine == 'CPG' and j > 1}
                           for j, (name, m, head) in enumerate(zip(self.names, self.multipliers, self.heads), 1)]

    # ----- the dictionary ------------------------------------------------------------------------
    def _fail(self, message):
        raise CPGError(f'{self.source}: {message}')

    def _check_top(self, ckpt):
        if not isinstance(ckpt, dict):
            self._fail(f'holds a {type(ckpt).__name__}; expected the original\'s checkpoint dict '
                       f'({", ".join(ORIGINAL_KEYS)})')
        if 'format' in ckpt and 'model' in ckpt:
            self._fail(f'is already a checkpoint of this repository (format {ckpt["format"]!r}); '
                       'use it as it is')
        missing = [k for k in ORIGINAL_KEYS if k not in ckpt]
        if missing:
            self._fail(f'has no key {missing[0]!r}; expected the original\'s checkpoint dict with '
                       f'{", ".join(ORIGINAL_KEYS)} (top-level keys here: {", ".join(map(str, list(ckpt)[:6]))})')
        unknown = [k for k in ckpt if k not in ORIGINAL_KEYS + IGNORED_TOP_KEYS]
        if unknown:
            self._fail(f'has the unknown top-level key {unknown[0]!r}; expected only '
                       f'{", ".join(ORIGINAL_KEYS)} (and {", ".join(IGNORED_TOP_KEYS)}, ignored)')
        for key in ('model_state_dict', 'masks', 'shared_layer_info', 'dataset2num_classes'):
            if not isinstance(ckpt[key], dict):
                self._fail(f'key {key!r} holds a {type(ckpt[key]).__name__}; expected a dict')

    def _task_names(self, ckpt):
        names = ckpt['dataset_history']
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
            self._fail(f"key 'dataset_history' is {names!r}; expected the list of task names")
        classes = list(ckpt['dataset2num_classes'])
        if classes != list(names):
            # heads are rebuilt in dataset2num_classes order but selected by dataset_history index
            self._fail(f"key 'dataset2num_classes' lists tasks {classes}; expected those of "
                       f"'dataset_history' in the same order: {list(names)}")
        return list(names)

    def _classes(self, counts):
        for name in self.names:
            value = counts[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self._fail(f"dataset2num_classes[{name!r}] is {value!r}; expected a positive class count")
        return {name: counts[name] for name in self.names}

    def _stores(self, info):
        stores = {}
        for name in self.names:
            if name not in info:
                self._fail(f"key 'shared_layer_info' has no entry for task {name!r}; expected one "
                           f"per task of 'dataset_history' ({', '.join(self.names)})")
            if not isinstance(info[name], dict):
                self._fail(f"shared_layer_info[{name!r}] is a {type(info[name]).__name__}; expected a dict")
            stores[name] = info[name]
        extra = [k for k in info if k not in self.names]
        if extra:
            self._fail(f"shared_layer_info has task {extra[0]!r}, which 'dataset_history' does not list")
        return stores

    def _engine(self):
        keys = set().union(*(set(s) for s in self.stores.values()))
        if keys <= CPG_STORE and keys & {'bias', 'piggymask', 'network_width_multiplier'}:
            return 'CPG'
        if keys <= PACKNET_STORE and keys & {'conv_bias', 'fc_bias'}:
            return 'PackNet'
        unknown = sorted(keys - CPG_STORE - PACKNET_STORE) or sorted(keys)
        self._fail(f"shared_layer_info holds keys {', '.join(map(str, unknown))}; expected the CPG "
                   f"engine's ({', '.join(sorted(CPG_STORE))}) or the PackNet engine's "
                   f"({', '.join(sorted(PACKNET_STORE))})")

    def _layout(self):
        for layout in LAYOUTS:
            if layout.probe_key in self.state:
                return layout
        shown = ', '.join(list(self.state)[:4])
        self._fail(f'model_state_dict keys ({shown}, ...) fit no registered architecture; expected '
                   + '; '.join(f'{lay.hint} -> {lay.arch}' for lay in LAYOUTS))

    def _probe_kwargs(self):
        return {'image_size': 112} if self.layout.arch == 'spherenet20' else {}

    def _check_masks(self):
        expected = [self.layout.theirs(n) for n in self.layers]
        missing = [n for n in expected if n not in self.masks]
        if missing:
            self._fail(f"masks has no entry 'module.{missing[0]}'; expected one per shared layer of "
                       f'{self.layout.arch} ({len(expected)} layers)')
        extra = [n for n in self.masks if n not in expected]
        if extra:
            self._fail(f"masks has the entry {extra[0]!r}, which is no shared layer of {self.layout.arch}")
        for name in expected:
            mask, where = self.masks[name], f"masks['module.{name}']"
            if not isinstance(mask, torch.Tensor) or mask.is_floating_point() or mask.is_complex():
                self._fail(f'{where} is not an integer tensor; expected uint8 owner ids')
            if name + '.weight' not in self.state:
                self._fail(f"model_state_dict has no '{name}.weight'; expected the shared weight of every layer")
            weight = _tensor(self.state[name + '.weight'], f"{self.source}: model_state_dict['{name}.weight']")
            if tuple(mask.shape) != tuple(weight.shape):
                self._fail(f"{where} has shape {tuple(mask.shape)}; expected the shape of "
                           f"'{name}.weight', {tuple(weight.shape)}")
            if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > len(self.names)):
                self._fail(f'{where} holds owner ids {int(mask.min())}..{int(mask.max())}; expected '
                           f'0..{len(self.names)} (0 free, k = task k of {len(self.names)})')

    def _state_tensor(self, key, what):
        if key not in self.state:
            self._fail(f'model_state_dict has no {key!r}; expected {what}')
        return _tensor(self.state[key], f'{self.source}: model_state_dict[{key!r}]')

    def _heads(self):
        """Per task: its head's kind ('linear', or 'angle' for face verification's Linear ->
        AngleLinear, spec §5.3), input width and tensors under our names."""
        heads = []
        for i, name in enumerate(self.names):
            prefix, classes = f'classifiers.{i}.', self.num_classes[name]
            what = f'the head of task {i + 1} {name!r}'
            if prefix + 'weight' in self.state:
                weight = self._state_tensor(prefix + 'weight', what)
                if weight.dim() != 2 or weight.shape[0] != classes:
                    self._fail(f"model_state_dict['{prefix}weight'] has shape {tuple(weight.shape)}; "
                               f'expected ({classes}, features) for task {name!r} ({classes} classes)')
                tensors = {'weight': weight, 'bias': self._state_tensor(prefix + 'bias', what)}
                heads.append({'kind': 'linear', 'in': weight.shape[1], 'tensors': tensors})
            elif prefix + '0.weight' in self.state:
                weight = self._state_tensor(prefix + '0.weight', what)
                angle = self._state_tensor(prefix + '1.weight', what)
                if weight.dim() != 2 or weight.shape[0] != EMBEDDING or tuple(angle.shape) != (EMBEDDING, classes):
                    self._fail(f"head of task {name!r}: '{prefix}0.weight' {tuple(weight.shape)} and "
                               f"'{prefix}1.weight' {tuple(angle.shape)}; expected ({EMBEDDING}, features) "
                               f'and ({EMBEDDING}, {classes})')
                tensors = {'embed.weight': weight, 'embed.bias': self._state_tensor(prefix + '0.bias', what),
                           'angle.weight': angle}
                heads.append({'kind': 'angle', 'in': weight.shape[1], 'tensors': tensors})
            else:
                self._fail(f"model_state_dict has no '{prefix}weight' (nor '{prefix}0.weight'); expected {what}")
        return heads

    def _account_state(self):
        """Every model_state_dict key is mapped or a known copy; returns the ignored ones."""
        layers = {self.layout.theirs(n): n for n in self.layers}
        modules = {self.layout.theirs(n): kind for n, kind in self.per_task.items()}
        head_keys = {f'classifiers.{i}.{k}' for i, head in enumerate(self.heads)
                     for k in (('weight', 'bias') if head['kind'] == 'linear' else ('0.weight', '0.bias', '1.weight'))}
        ignored = {'last task copies': [], 'classifier alias': []}
        for key in self.state:
            module, _, param = key.rpartition('.')
            if key in head_keys or (module in layers and param == 'weight'):
                continue
            if key.startswith('classifier.'):
                ignored['classifier alias'].append(key)
            elif module in layers and (param == 'piggymask' or (param == 'bias' and layers[module] in self.with_bias)):
                ignored['last task copies'].append(key)
            elif module in modules and (param == 'weight' if modules[module] == 'prelu'
                                        else param in tuple(BN_STORE) + ('num_batches_tracked',)):
                ignored['last task copies'].append(key)
            else:
                self._fail(f'model_state_dict has the unexpected key {key!r}; expected the '
                           f'{self.layout.arch} layout {self.layout.hint} with heads classifiers.<i>.*')
        return ignored

    # ----- width ----------------------------------------------------------------------------------
    def _root(self, name):
        """The task's square-rooted width multiplier as the original stored it (PackNet: 1)."""
        store = self.stores[name]
        if self.engine == 'PackNet':
            return 1.0   # the PackNet networks have a fixed width
        where = f"{self.source}: shared_layer_info[{name!r}]['network_width_multiplier']"
        if 'network_width_multiplier' not in store:
            self._fail(f"shared_layer_info[{name!r}] has no 'network_width_multiplier'; expected "
                       'the (square-rooted) width the task was trained at')
        raw_multiplier(store['network_width_multiplier'], where)   # a positive float, or one error line
        return float(store['network_width_multiplier'])

    def _width_note(self, name, base_width, multiplier):
        """' (task X at width multiplier m ...)': why a shape is expected, for error lines."""
        stored = self.stores[name].get('network_width_multiplier')
        base = f' x base width {base_width:g}' if base_width != 1 else ''
        return f' (task {name!r} at width multiplier {multiplier:g}{base}' + (
            f'; the original stored network_width_multiplier {stored!r})' if stored is not None else ')')

    def _model_kwargs(self):
        if self.layout.arch != 'spherenet20':
            return {}
        # the original flattens 512w x 7 x 7 (112-pixel faces); read the side from the first head
        name = self.names[0]
        slopes = self._store_tensor(name, 'prelu_layer_weight', 'relu4_3')
        area, rest = divmod(self.heads[0]['in'], slopes.numel())
        side = math.isqrt(area)
        if rest or side * side != area or side == 0:
            self._fail(f'the head of task {name!r} takes {self.heads[0]["in"]} features, which is not '
                       f'{slopes.numel()} channels (relu4_3) x side x side')
        return {'image_size': side * 16}

    def _fit_width(self):
        """(base width, raw multiplier per task) under which our model has exactly the file's shapes:
        the shared weights at the widest task, and every task's block, BN / PReLU / bias widths,
        piggymask shapes and head inputs. The original builds int(c * r) channels from the stored
        root r = sqrt(m); here int(c * base_width * sqrt(m')). Tried in turn: base width 1 with
        m' = r^2 (the paper's networks), or, when the narrowest task's root r0 is below 1, base width
        r0 with m' = (r / r0)^2 (the first task at 1: growth stays >= 1, as this repository's flags
        require); then a file written at reduced channel counts: base width 1/2, 1/4, ... with m' = r^2."""
        roots = [self._root(name) for name in self.names]
        first = self.state[self.layout.theirs(self.layers[0]) + '.weight'].shape[0]
        top = min(min(roots), 1.0)
        candidates = ([(top, top)] + [(2.0 ** -k, 1.0) for k in range(9)] + [(first / STEM_CHANNELS, 1.0)])
        best = None   # (how far the candidate got, its first mismatch)
        for base_width, divisor in dict.fromkeys(candidates):
            try:
                multipliers = [raw_multiplier(r / divisor, 'the width') for r in roots]
            except CPGError:
                continue
            misfit = self._misfit(base_width, multipliers)
            if misfit is None:
                return base_width, multipliers
            if best is None or misfit[0] > best[0]:
                best = misfit
        self._fail(best[1] + ': the shapes fit no registered architecture at any base width tried '
                   '(1, the narrowest task\'s root, halvings)')

    def _misfit(self, base_width, multipliers):
        """None if the model at (base_width, multipliers) has the file's shapes, else (how close, message)."""
        tasks = [{'name': n, 'num_classes': self.num_classes[n], 'multiplier': m, 'head': h['kind']}
                 for n, m, h in zip(self.names, multipliers, self.heads)]
        try:
            with torch.device('meta'):
                model = build_model_with_tasks(self.layout.arch, base_width, tasks, **self.model_kwargs)
        except ValueError as exc:
            return (0, -math.inf), f'{self.layout.arch} cannot be built at base width {base_width:g}: {exc}'
        wrong = []   # the closest candidate (fewest wrong layers) names the layer that is off
        for name, layer in model.masked_layers():
            theirs = self.layout.theirs(name)
            have = tuple(self.state[theirs + '.weight'].shape)
            if tuple(layer.weight.shape) != have:
                wrong.append(f"model_state_dict['{theirs}.weight'] has shape {have}; expected "
                             f'{tuple(layer.weight.shape)} (the widest task, width multiplier '
                             f'{max(multipliers):g} x base width {base_width:g})')
        if wrong:
            return (0, -len(wrong)), wrong[0]
        for j, (name, m) in enumerate(zip(self.names, multipliers), 1):
            why = self._width_note(name, base_width, m)
            expected = {}
            for lname, layer in model.masked_layers():
                out_f, in_f = layer.task_shapes[j]
                theirs = self.layout.theirs(lname)
                if layer.has_bias:
                    key = 'bias' if self.engine == 'CPG' else ('fc_bias' if lname in self.linear else 'conv_bias')
                    expected[(key, theirs)] = (out_f,)
                if self.engine == 'CPG' and j > 1:
                    expected[('piggymask', theirs)] = (out_f, in_f) + tuple(layer.weight.shape[2:])
            for mname, module in model.per_task_modules():
                theirs, width = self.layout.theirs(mname), tuple(module.per_task[str(j)].weight.shape)
                keys = ('prelu_layer_weight',) if self.per_task[mname] == 'prelu' else tuple(BN_STORE.values())
                expected.update({(key, theirs): width for key in keys})
            for (key, layer), shape in expected.items():
                have = tuple(self._store_tensor(name, key, layer).shape)
                if have != shape:
                    return (1, 0), (f"shared_layer_info[{name!r}][{key!r}][{layer!r}] has shape "
                                    f'{have}; expected {shape}{why}')
            want = model.heads[str(j)].in_features   # nn.Linear and AngleHead both say it
            if self.heads[j - 1]['in'] != want:
                key = 'weight' if self.heads[j - 1]['kind'] == 'linear' else '0.weight'
                return (1, 0), (f"model_state_dict['classifiers.{j - 1}.{key}'] takes "
                                f"{self.heads[j - 1]['in']} features; expected {want}{why}")
        return None

    # ----- conversion -----------------------------------------------------------------------------
    def _store_tensor(self, name, key, layer, shape=None):
        store = self.stores[name]
        if key not in store or not isinstance(store[key], dict):
            self._fail(f"shared_layer_info[{name!r}] has no {key!r}; expected it for task {name!r}")
        if layer not in store[key]:
            self._fail(f"shared_layer_info[{name!r}][{key!r}] has no {layer!r}; expected one per "
                       f'such layer for task {name!r}')
        why = '' if shape is None else self._width_note(name, self.base_width,
                                                        self.multipliers[self.names.index(name)])
        return _tensor(store[key][layer], f"{self.source}: shared_layer_info[{name!r}][{key!r}][{layer!r}]",
                       shape, why)

    @torch.no_grad()
    def to_model(self, progress=None):
        """Our multi-task model holding every task exactly as the original ran it; returns (model, stats)."""
        model = build_model_with_tasks(self.layout.arch, self.base_width, self.task_table, **self.model_kwargs)
        for info, task in zip(model.tasks, self.task_table):
            info.update(task)
        layers = model.masked_layers()
        stats = {'zeroed_free': 0, 'picked': [0] * len(self.names), 'earlier': [0] * len(self.names)}
        for our_name, layer in (progress(layers) if progress else layers):
            theirs = self.layout.theirs(our_name)
            layer.weight.copy_(self.state[theirs + '.weight'])
            layer.owner.copy_(self.masks[theirs].to(layer.owner.dtype))
            free = layer.owner == 0
            stats['zeroed_free'] += int(torch.count_nonzero(layer.weight[free]))
            layer.weight.masked_fill_(free, 0.0)   # unused by every task; the training phases rely on it
            for j, name in enumerate(self.names, 1):
                self._fill_layer_task(our_name, layer, j, name, stats)
        for our_name, module in model.per_task_modules():
            for j, name in enumerate(self.names, 1):
                self._fill_module_task(our_name, module.per_task[str(j)], name)
        for j, (name, head) in enumerate(zip(self.names, self.heads), 1):
            self._fill_head(model.heads[str(j)], head, j, name)
        return model, stats

    def _fill_layer_task(self, our_name, layer, j, name, stats):
        theirs = self.layout.theirs(our_name)
        out_f, in_f = layer.task_shapes[j]
        block = (out_f, in_f) + tuple(layer.weight.shape[2:])
        if layer.has_bias:
            key = 'bias' if self.engine == 'CPG' else ('fc_bias' if our_name in self.linear else 'conv_bias')
            layer.biases[str(j)].copy_(self._store_tensor(name, key, theirs, (out_f,)))
        if not self.task_table[j - 1]['picks']:
            return   # task 1, or the PackNet engine: every earlier weight is used
        pick = self._store_tensor(name, 'piggymask', theirs, block)
        picked = pick.gt(PICK_THRESHOLD)   # the original's binarizer, on the stored float32 values
        owner = layer.owner[:out_f, :in_f]
        dropped = int(torch.count_nonzero((owner == j) & ~picked))
        if dropped:
            self._fail(f"shared_layer_info[{name!r}]['piggymask'][{theirs!r}] is <= {PICK_THRESHOLD} on "
                       f'{dropped} weight(s) that task {name!r} owns; the original never writes that '
                       '(those entries stay at 0.01) and this repository cannot represent it')
        layer.set_pick_bits(j, picked)
        old = (owner >= 1) & (owner < j)
        stats['earlier'][j - 1] += int(old.sum())
        stats['picked'][j - 1] += int((old & picked).sum())

    def _fill_module_task(self, our_name, module, name):
        theirs = self.layout.theirs(our_name)
        if self.per_task[our_name] == 'prelu':
            module.weight.copy_(self._store_tensor(name, 'prelu_layer_weight', theirs, module.weight.shape))
            return
        for attr, key in BN_STORE.items():
            target = getattr(module, attr)
            target.copy_(self._store_tensor(name, key, theirs, target.shape))

    def _fill_head(self, head, spec, j, name):
        for key, value in spec['tensors'].items():
            target = head.get_parameter(key)
            if tuple(target.shape) != tuple(value.shape):
                i = j - 1
                original = {'weight': 'weight', 'bias': 'bias', 'embed.weight': '0.weight',
                            'embed.bias': '0.bias', 'angle.weight': '1.weight'}[key]
                self._fail(f"model_state_dict['classifiers.{i}.{original}'] has shape {tuple(value.shape)}; "
                           f'expected {tuple(target.shape)}'
                           f'{self._width_note(name, self.base_width, self.multipliers[i])}')
            target.copy_(value)
