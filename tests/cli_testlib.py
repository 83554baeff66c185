"""Helpers of the tests that drive the entry script and the tools in-process."""
import importlib.util
import os

import CPG_cifar100_main as cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = os.environ.get('CPG_TEST_DEVICE', 'cpu')


def cli_args(data_root, goals, mode, save_folder, load_folder=None, epochs=2, **flags):
    """Parsed (and checked) CPG_cifar100_main.py args of one stage at the tests' tiny width.

    flags: --name value pairs; a value of None makes a bare switch (e.g. finetune_again=None).
    """
    argv = ['--mode', mode, '--dataset', flags.pop('dataset', 'toy_task_2'), '--data_root', data_root,
            '--save_folder', save_folder, '--epochs', str(epochs), '--base_width', '0.0625',
            '--workers', '0', '--device', DEVICE, '--batch_size', '64', '--baseline_acc_file', goals,
            '--train_acc_gate', '0', '--lr_mask', '0.01', '--resume_every_minutes', '0']
    if load_folder:
        argv += ['--load_folder', load_folder]
    for key, value in flags.items():
        argv += [f'--{key}'] if value is None else [f'--{key}', str(value)]
    parser = cli.get_args_parser()
    args = parser.parse_args(argv)
    cli.check_args(parser, args)
    return args


def load_tool(name):
    """Import tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
