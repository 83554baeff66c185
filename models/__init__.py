"""Model registry: architectures are looked up by name (argparse choices come from MODELS)."""
from .layers import MaskedConv2d, MaskedLayer, MaskedLinear, PerTask  # noqa: F401
from .multitask import HEAD_KINDS, MultiTaskNet  # noqa: F401
from .resnet import resnet50
from .vgg import custom_vgg_cifar100

MODELS = {
    'custom_vgg_cifar100': custom_vgg_cifar100,
    'resnet50': resnet50,
}


def build_model(arch, base_width=1.0, multiplier=1.0):
    """Empty multi-task backbone (no task yet) of architecture `arch`."""
    if arch not in MODELS:
        raise ValueError(f'unknown architecture {arch!r}; choose one of {sorted(MODELS)}')
    return MODELS[arch](base_width=base_width, multiplier=multiplier)


def build_model_with_tasks(arch, base_width, tasks):
    """Rebuild a model holding `tasks` ([{'name', 'num_classes', 'multiplier'}]) before loading."""
    model = build_model(arch, base_width, tasks[0]['multiplier'] if tasks else 1.0)
    for task in tasks:
        model.add_task(task['name'], task['num_classes'], task['multiplier'], task.get('head', 'linear'))
    return model
