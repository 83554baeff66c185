"""Each method script's recipe, pinned from the script down to the optimizers: the scripts run with
a stand-in `python` on PATH that records every process's arguments and says each task was learned
(no training); each task's arguments are then parsed by its entry script and turned into what its
stages would build (utils/recipes.py, utils/schedules.py, utils/selection.py) on a tiny model.

A recipe is: what SGD trains (shared weights, shared-layer biases, BatchNorm, head), with Nesterov
or not, its LR and manual L2; the head's own Adam and the pick masks' Adam with their LRs; the LR
of every group at each epoch where one changes; which epoch is kept (and its gate). The expected
values are docs/methods.md' table, with the source of each setting beside it.
"""
import json
import os
import stat
import sys

import pytest

import CPG_cifar100_main
import CPG_face_main
import CPG_imagenet_main
from cpg_testlib import run_script, subprocess_env, tail, tiny_model
from utils.grower import assign_free_capacity
from utils.picker import build_pick_optimizer
from utils.phases import prune_schedule
from utils.recipes import build_head_optimizer, build_weight_optimizer, head_lr
from utils.schedules import build_schedule
from utils.selection import build_selection
from utils.sequence import TaskRunner

pytestmark = pytest.mark.slow

MAINS = {'CPG_cifar100_main.py': CPG_cifar100_main, 'CPG_imagenet_main.py': CPG_imagenet_main,
         'CPG_face_main.py': CPG_face_main}
RECORDER = '''#!{python}
"""Stand-in for python: records the arguments; a --mode task process says its task is learned."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ['RECIPE_CALLS'], 'a') as f:
    f.write(json.dumps(args) + '\\n')
if '--mode' in args and args[args.index('--mode') + 1] == 'task':
    folder = args[args.index('--task_folder') + 1]
    os.makedirs(os.path.join(folder, 'gradual_prune'), exist_ok=True)
    open(os.path.join(folder, 'gradual_prune', 'chosen.json'), 'w').write('{{}}')
    open(os.path.join(folder, 'exit_status'), 'w').write('0')
'''


@pytest.fixture(scope='module')
def record_tasks(tmp_path_factory):
    """record_tasks(script, **env) -> [argv of each task process, in order]."""
    root = tmp_path_factory.mktemp('recipes')
    shim = root / 'bin'
    shim.mkdir()
    fake = shim / 'python'
    fake.write_text(RECORDER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    data = root / 'data'
    for n in range(1000):   # experiment 2: a 1000-class imagenet is the pretrained, evaluated task
        os.makedirs(data / 'imagenet' / 'train' / f'c{n}', exist_ok=True)
    goals = root / 'goals.json'
    goals.write_text(json.dumps({t: '0.5' for t in ('t1', 't2', 't3', 'imagenet', 'cubs_cropped', 'flowers',
                                                   'face_verification', 'gender', 'emotion')}))
    runs = iter(range(10 ** 6))

    def run(script, **env):
        run_id = next(runs)
        calls = root / f'calls{run_id}.jsonl'
        knobs = dict(DATA_ROOT=str(data), CHECKPOINT_ROOT=str(root / f'ck{run_id}'), GOALS_FILE=str(goals),
                     RESULTS_FILE=str(root / f'results{run_id}.json'), RECIPE_CALLS=str(calls), NPROC='1',
                     PRETRAINED_PATH=str(root / 'pretrained.pth'), TARGET_TASK_ID='all', AGE_FOLDS='')
        knobs.update(env)
        environment = subprocess_env(**knobs)
        environment['PATH'] = f'{shim}{os.pathsep}{environment["PATH"]}'
        proc = run_script(script, environment, timeout=300)
        assert proc.returncode == 0, tail(proc)
        argvs = [json.loads(line) for line in open(calls)]
        return [argv for argv in argvs if '--mode' in argv and argv[argv.index('--mode') + 1] == 'task']
    return run


def parse(argv):
    """The entry script's checked args of a recorded task process."""
    module = MAINS[os.path.basename(argv[0])]
    parser = module.get_args_parser()
    args = parser.parse_args(argv[1:])
    module.check_args(parser, args)
    return args


def _categories(model, task, params):
    """Which kinds of parameters `params` holds."""
    ids = {id(p) for p in params}
    kinds = {'weights': [layer.weight for _, layer in model.masked_layers()],
             'biases': [layer.biases[str(task)] for _, layer in model.masked_layers() if layer.has_bias],
             'bn': [p for _, m in model.per_task_modules() for p in m.per_task[str(task)].parameters()],
             'head': list(model.heads[str(task)].parameters())}
    return sorted(kind for kind, members in kinds.items() if ids & {id(p) for p in members})


def _lr_changes(schedule, epochs, args, masks):
    """[(epoch, weights' LR, mask LR, head LR)] at epoch 0 and wherever one changes (None: no such
    optimizer)."""
    out, last = [], None
    for epoch in range(epochs):
        lr, lr_mask = schedule.lrs(epoch)
        lr_mask = lr_mask if masks is not None else None
        head = head_lr(args, lr, schedule.base_lr) if args.lr_classifier is not None else None
        now = tuple(round(v, 12) if v is not None else None for v in (lr, lr_mask, head))
        if now != last:
            out.append((epoch,) + now)
            last = now
    return out


def recipe(args, phase, task):
    """What the stage `phase` ('finetune' = Phase A, 'prune') of task `task` builds."""
    model = tiny_model()
    for t in range(1, task + 1):
        model.add_task(f't{t}', 5)
        assign_free_capacity(model, t)
    learn_pick = phase == 'finetune' and task >= 2 and args.learn_pick
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=learn_pick, fixed_pick=False, weight_decay=args.weight_decay)
    sgd = build_weight_optimizer(model, task, args, args.lr)
    head = build_head_optimizer(model, task, args)
    masks = build_pick_optimizer(model, args.lr_mask) if learn_pick else None
    group = sgd.param_groups[0]
    if phase == 'finetune':
        schedule = build_schedule(args, args.lr, args.lr_mask, args.epochs)
    else:
        schedule = prune_schedule(args)
    selection = build_selection(args, phase, args.epochs, goal=0.5, reference=0.9)
    gate = getattr(selection, 'gate', None)
    return {'sgd': {'trains': _categories(model, task, group['params']), 'nesterov': group['nesterov'],
                    'momentum': group['momentum'], 'weight_decay': group['weight_decay'],
                    'manual_l2': args.weight_decay},
            'head_adam': None if head is None else (type(head).__name__, head.param_groups[0]['lr']),
            'mask_adam': None if masks is None else (type(masks).__name__, masks.param_groups[0]['lr']),
            'bn_mode': 'train' if args.train_bn else 'eval',
            'schedule': (type(schedule).__name__, _lr_changes(schedule, args.epochs, args, masks)),
            'selection': (type(selection).__name__, None if gate is None else str(gate)),
            'epochs': args.epochs}


def stages_of(argv):
    """{'finetune': recipe, 'prune': recipe or absent} of one recorded task process."""
    args = parse(argv)
    task = 1 + argv.count('--load_folder')
    runner = TaskRunner(args, None, None, 'cpu')
    out = {'finetune': recipe(runner.stage_args('finetune', 'scratch'), 'finetune', task)}
    if args.pruning_ratios:
        ratio = args.pruning_ratios[0]
        out['prune'] = recipe(runner.stage_args('prune', 'p', **runner.prune_changes(ratio, 0.0, 'x')), 'prune', task)
        out['prune']['ratio'] = ratio
        out['prune']['one_shot'] = args.pruning_interval == 0
    return out


ALL = ['biases', 'bn', 'head', 'weights']
NESTEROV = {'nesterov': True, 'momentum': 0.9, 'weight_decay': 0.0}


def test_piggyback_runs_piggybacks_own_settings_in_both_experiments(record_tasks):
    """piggyback's run_piggyback_training.sh / main.py: masks Adam 1e-4 and classifier Adam 1e-4,
    x0.1 every 15 epochs, 30 epochs, BatchNorm in eval mode (no --train_bn), best epoch. Task 1 of
    experiment 1 is trained as CPG's Phase A (piggyback needs a trained network to pick from)."""
    later = {'sgd': dict(NESTEROV, trains=['weights'], manual_l2=0.0), 'head_adam': ('Adam', 1e-4),
             'mask_adam': ('Adam', 1e-4), 'bn_mode': 'eval',
             'schedule': ('MilestoneSchedule', [(0, 1e-4, 1e-4, 1e-4), (15, 1e-5, 1e-5, 1e-5)]),
             'selection': ('BestEpoch', None), 'epochs': 30}
    for script in ('experiment1/Piggyback_cifar100.sh', 'experiment2/Piggyback_imagenet.sh'):
        tasks = ('t1 t2 t3' if 'cifar' in script else 'imagenet cubs_cropped flowers')
        argvs = record_tasks(script, TASKS=tasks)
        assert len(argvs) == 3
        for argv in argvs[1:]:
            assert stages_of(argv) == {'finetune': later}, script
    first = stages_of(record_tasks('experiment1/Piggyback_cifar100.sh', TASKS='t1 t2')[0])['finetune']
    assert first['sgd'] == dict(NESTEROV, trains=ALL, manual_l2=4e-5) and first['bn_mode'] == 'train'
    assert first['schedule'] == ('MilestoneSchedule', [(0, 1e-2, None, None), (50, 1e-3, None, None),
                                                       (80, 1e-4, None, None)])
    assert first['selection'] == ('LastEpoch', 'gate 0.0')   # no goal: accepted whatever the gate


def test_packnet_experiment2_runs_packnets_nobias_nobn_settings(record_tasks):
    """PackNet's run_imagenet_pruning.sh (imagenet: prune 0.5, 10 epochs at 1e-4, x0.1 every 5,
    --train_bn --train_biases) and run_all_sequence.sh "nobias-nobn" -> run_sequence.sh (20 epochs
    at 1e-3, x0.1 every 10; prune 0.75, 10 epochs at 1e-4; the last task not pruned); main.py:
    SGD momentum 0.9 without Nesterov, weight decay 0, the best epoch (a retrain must beat the
    pruned model)."""
    argvs = record_tasks('experiment2/PackNet_imagenet.sh', TASKS='imagenet cubs_cropped flowers')
    plain = {'nesterov': False, 'momentum': 0.9, 'weight_decay': 0.0, 'manual_l2': 0.0}
    imagenet, cubs, flowers = (stages_of(argv) for argv in argvs)
    assert imagenet['finetune']['epochs'] == 0   # the pretrained ResNet-50, evaluated
    assert imagenet['prune'] == {'sgd': dict(plain, trains=ALL), 'head_adam': None, 'mask_adam': None,
                                 'bn_mode': 'train', 'schedule': ('MilestoneSchedule', [(0, 1e-4, None, None),
                                                                                      (5, 1e-5, None, None)]),
                                 'selection': ('BestEpoch', None), 'epochs': 10, 'ratio': '0.5', 'one_shot': True}
    for later in (cubs, flowers):
        assert later['finetune'] == {'sgd': dict(plain, trains=['head', 'weights']), 'head_adam': None,
                                     'mask_adam': None, 'bn_mode': 'eval',
                                     'schedule': ('MilestoneSchedule', [(0, 1e-3, None, None), (10, 1e-4, None, None)]),
                                     'selection': ('BestEpoch', None), 'epochs': 20}
    assert cubs['prune'] == {'sgd': dict(plain, trains=['head', 'weights']), 'head_adam': None, 'mask_adam': None,
                             'bn_mode': 'eval', 'schedule': ('ConstantSchedule', [(0, 1e-4, None, None)]),
                             'selection': ('BestEpoch', None), 'epochs': 10, 'ratio': '0.75', 'one_shot': True}
    assert 'prune' not in flowers


def test_packnet_experiment1_runs_the_cpg_papers_packnet_settings(record_tasks):
    """CPG's experiment1/PackNet_cifar100.sh with packnet_cifar100_main_normal.py: 100 epochs at 1e-2
    (x0.1 after 50 and 80), Nesterov SGD, manual L2 4e-5, BatchNorm per task; prune 0.6 at once,
    30 epochs at 1e-3 (x0.1 after 25), the last epoch kept only above train accuracy 0.97."""
    for argv in record_tasks('experiment1/PackNet_cifar100.sh', TASKS='t1 t2'):
        stages = stages_of(argv)
        assert stages['finetune']['sgd'] == dict(NESTEROV, trains=ALL, manual_l2=4e-5)
        assert stages['finetune']['schedule'] == ('MilestoneSchedule', [(0, 1e-2, None, None), (50, 1e-3, None, None),
                                                                        (80, 1e-4, None, None)])
        assert stages['finetune']['selection'][0] == 'LastEpoch' and stages['finetune']['bn_mode'] == 'train'
        assert stages['prune'] == {'sgd': dict(NESTEROV, trains=ALL, manual_l2=4e-5), 'head_adam': None,
                                   'mask_adam': None, 'bn_mode': 'train',
                                   'schedule': ('MilestoneSchedule', [(0, 1e-3, None, None), (25, 1e-4, None, None)]),
                                   'selection': ('LastEpoch', 'gate 0.97'), 'epochs': 30, 'ratio': '0.6',
                                   'one_shot': True}


@pytest.mark.parametrize('script, main', [('experiment1/CPG_cifar100_scratch_mul_1.5.sh', 'cifar'),
                                          ('experiment1/PAE_cifar100.sh', 'cifar'),
                                          ('experiment2/CPG_imagenet.sh', 'imagenet'),
                                          ('experiment3/FvGeEm_CPG_face.sh', 'face')])
def test_cpg_scripts_original_rules_gate_and_pick_tolerance(record_tasks, script, main):
    """Every CPG/PAE script: the corrected rules by default, --original_rules with ORIGINAL_RULES=1
    (experiment 3: AngleLoss's lambda restarting too), TRAIN_ACC_GATE=relative:D passed through,
    and the automatic pick's tolerance = the task's goal margin unless ALLOW_ACC_LOSS says otherwise."""
    tasks = {'cifar': 't1 t2', 'imagenet': 'imagenet cubs_cropped', 'face': 'face_verification gender'}[main]
    env = dict(TASKS=tasks, PRETRAINED_PATH='')
    default = [parse(argv) for argv in record_tasks(script, **env)]
    original = [parse(argv) for argv in record_tasks(script, ORIGINAL_RULES='1', TRAIN_ACC_GATE='relative:0.02',
                                                     **env)]
    assert len(default) == len(original) == 2
    for args in default:
        assert (args.retrain_baseline, args.release_zeroing, args.sparsity_rule, args.gate_stops_must_prune) == \
            ('pruned', 'release', 'exact', False)
        assert args.allow_acc_loss == args.goal_margin
        assert args.train_acc_gate == (0.95 if main == 'cifar' else args.train_acc_gate)
        assert getattr(args, 'angle_lambda_restart', False) is False
    for args in original:
        assert (args.retrain_baseline, args.release_zeroing, args.sparsity_rule, args.gate_stops_must_prune) == \
            ('fresh', 'validation', 'original', True)
        assert args.train_acc_gate == 'relative:0.02'
        assert getattr(args, 'angle_lambda_restart', main != 'face') is True
    if main == 'face':   # per-task margins: gender 0.015
        assert [a.allow_acc_loss for a in default] == [0.005, 0.015]
