"""Model registry: architectures are looked up by name (argparse choices come from MODELS)."""
import inspect

from .layers import MaskedConv2d, MaskedLayer, MaskedLinear, PerTask  # noqa: F401
from .multitask import HEAD_KINDS, MultiTaskNet, read_pretrained_state  # noqa: F401
from .progressive import progressive_resnet50
from .resnet import resnet50
from .spherenet import spherenet20
from .vgg import custom_vgg_cifar100

MODELS = {
    'custom_vgg_cifar100': custom_vgg_cifar100,
    'progressive_resnet50': progressive_resnet50,
    'resnet50': resnet50,
    'spherenet20': spherenet20,
}


def build_model(arch, base_width=1.0, multiplier=1.0, **model_kwargs):
    """Empty multi-task backbone (no task yet) of architecture `arch`; model_kwargs are the
    architecture's own (e.g. spherenet20's image_size), as model.model_kwargs() reports them."""
    if arch not in MODELS:
        raise ValueError(f'unknown architecture {arch!r}; choose one of {sorted(MODELS)}')
    factory = MODELS[arch]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(model_kwargs) - set(accepted))
    if unknown:
        raise ValueError(f'architecture {arch!r} takes no {", ".join(unknown)}')
    return factory(base_width=base_width, multiplier=multiplier, **model_kwargs)


def build_model_with_tasks(arch, base_width, tasks, **model_kwargs):
    """Rebuild a model holding `tasks` ([{'name', 'num_classes', 'multiplier'}]) before loading."""
    model = build_model(arch, base_width, tasks[0]['multiplier'] if tasks else 1.0, **model_kwargs)
    for task in tasks:
        model.add_task(task['name'], task['num_classes'], task['multiplier'], task.get('head', 'linear'))
    return model
