"""Check every task of an experiment before any training: folders, class counts, goals.

Usage (the experiment scripts, right after sourcing experiment1/common.sh):
  python tools/preflight.py --data_root "$DATA_ROOT" --num_classes "$NUM_CLASSES" \
      --tasks "${TASK_LIST[@]}" [--goals_file "$GOALS_FILE"]
  python tools/preflight.py --layout finegrained --data_root "$DATA_ROOT" --tasks ...  # experiment 2
  python tools/preflight.py --layout face --data_root "$DATA_ROOT" --pairs_file "$PAIRS_FILE" \
      --tasks ...  # experiment 3
With VAL_FRACTION > 0 the selections never read the test split: pass --splits train.

Layouts: cifar <data_root>/<split>/<task>/<class>/ (--num_classes required); finegrained
<data_root>/<task>/<split>/<class>/ with imagenet's test split in val/ (--num_classes optional:
class counts come from the folders, and are printed); face <data_root>/<task>/{train,val}/<class>/
(val: the test split), where the verification task (--verification_task) needs its train identities,
its LFW tree <data_root>/<task>/val/<person>/ and at least 10 pairs of --pairs_file whose images
exist, whatever --splits (it always selects on LFW).

All tasks are checked, then: one stdout line "preflight: N tasks OK (...)" and exit 0, or ONE
stderr line "error: preflight: <problem>; <problem>; ...; to fix: ..." and exit 1. Nothing is
decoded: class folders are listed and each is read only up to its first image, with the loaders'
own discovery rules (utils/folder_tasks.py), so preflight and training never disagree.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.face_dataset import DEFAULT_PAIRS_FILE, VERIFICATION_TASK, lfw_root  # noqa: E402
from utils.face_dataset import split_dir as face_split_dir  # noqa: E402
from utils.finegrained_dataset import split_dir as finegrained_split_dir  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.folder_tasks import class_folders, has_image, image_names  # noqa: E402
from utils.records import check_fraction, goal_problems_of, read_goals  # noqa: E402
from utils.verification import pairs_problems  # noqa: E402

DATA_HINT = ('set DATA_ROOT, TASKS and NUM_CLASSES to match the data, or prepare it '
             '(tools/cifar100_to_png.py, docs/experiment1.md "Data")')
FINEGRAINED_DATA_HINT = ('set DATA_ROOT and TASKS to match the data, or prepare it (docs/experiment2.md '
                         '"Data"; tools/check_data.py --experiment 2)')
FACE_DATA_HINT = ('set DATA_ROOT, TASKS and PAIRS_FILE to match the data, or prepare it (docs/experiment3.md '
                  '"Data"; tools/check_data.py --experiment 3)')
LAYOUTS = ('cifar', 'finegrained', 'face')
TASK_FIRST = ('finegrained', 'face')  # layouts <data_root>/<task>/<split>/
GOAL_HINT = ('write the missing goals with experiment1/baseline_cifar100.sh '
             '(or by hand: JSON {"<task>": "0.xxxx"})')


class PreflightParser(argparse.ArgumentParser):
    """A bad flag is one 'error: preflight:' line and exit 1 too (argparse's 2 means "widen")."""

    def error(self, message):
        sys.stderr.write(f'error: preflight: {message}; see python tools/preflight.py --help\n')
        sys.exit(1)


def get_args_parser():
    parser = PreflightParser('preflight.py', description=__doc__.splitlines()[0])
    # Data
    parser.add_argument('--data_root', required=True,
                        help='dataset root holding <split>/<task>/<class>/<image> (cifar layout) or '
                             '<task>/<split>/<class>/<image> (finegrained)')
    parser.add_argument('--layout', choices=LAYOUTS, default='cifar',
                        help='cifar (experiment 1), finegrained (experiment 2; imagenet: val/ is its test '
                             'split) or face (experiment 3; val/ is the test split, LFW pairs)')
    parser.add_argument('--tasks', nargs='*', required=True, help='task folder names, in order')
    parser.add_argument('--num_classes', type=int, nargs='+', default=None,
                        help='classes per task: one value for every task, or one per task '
                             '(required for the cifar layout; finegrained: optional)')
    parser.add_argument('--splits', nargs='+', default=['train', 'test'], choices=['train', 'test'],
                        help='splits every task must have; "train" alone when VAL_FRACTION > 0 '
                             '(selection on held-out train images: the test split is not needed)')
    # Face verification (--layout face)
    parser.add_argument('--pairs_file', default=DEFAULT_PAIRS_FILE,
                        help='face layout: the LFW pairs list of the verification task')
    parser.add_argument('--verification_task', default=VERIFICATION_TASK,
                        help='face layout: the task whose val folder is the LFW tree')
    parser.add_argument('--image_size', type=int, default=None,
                        help='cifar layout: the side every image must have (32: experiment 1\'s VGG16-BN '
                             'flattens a 1x1 map after 5 poolings); the first image of each class is checked')
    # Goals
    parser.add_argument('--goals_file', default=None,
                        help='accuracy-goal JSON; when given, every task needs a goal in [0, 1] there')
    parser.add_argument('--fractions', nargs='*', default=[], metavar='KNOB=VALUE',
                        help='knobs that must be fractions in [0, 1) (GOAL_MARGIN=0.005 ALLOW_ACC_LOSS=0.0 ...), '
                             'checked with the goals')
    return parser


def _expected_classes(num_classes, task):
    """The class count `task` must have: one int for all, a {task: int} mapping, or None."""
    if isinstance(num_classes, dict):
        return num_classes.get(task)
    return num_classes


def _split_problems(task, task_dir, expected):
    """(problems, class folder names) of one task in one split."""
    if not os.path.isdir(task_dir):
        return [f'{task}: no folder {task_dir}'], None
    try:
        classes = class_folders(task_dir)
        empty = [name for name in classes if not has_image(os.path.join(task_dir, name))]
    except OSError as exc:  # e.g. no read permission
        return [f'{task}: cannot list {exc.filename or task_dir} ({exc.strerror or exc})'], None
    problems = []
    if len(empty) == 1:
        problems.append(f'{task}: no images in {os.path.join(task_dir, empty[0])}')
    elif empty:
        shown = ', '.join(empty[:3]) + (', ...' if len(empty) > 3 else '')
        problems.append(f'{task}: {len(empty)} class folders without images in {task_dir} ({shown})')
    found = len(classes) - len(empty)  # class folders holding at least one image
    if expected is not None and found != expected:
        problems.append(f'{task}: {found} classes in {task_dir}, NUM_CLASSES is {expected}')
    return problems, classes


def task_split_dir(data_root, task, split, layout='cifar'):
    """The folder holding the class folders of `task`'s `split` in `layout`."""
    if layout == 'finegrained':
        return finegrained_split_dir(data_root, task, split)
    if layout == 'face':
        return face_split_dir(data_root, task, split)
    return os.path.join(data_root, split, task)


def _task_problems(data_root, task, expected, splits, layout='cifar', found_classes=None):
    """Every problem of one task's folders, over all splits."""
    problems, classes_of = [], {}
    for split in splits:
        task_dir = task_split_dir(data_root, task, split, layout)
        found, classes = _split_problems(task, task_dir, expected)
        if classes is not None and found_classes is not None:
            found_classes.setdefault(task, len(classes))
        problems += found
        if classes is not None:
            classes_of[task_dir] = classes
    # The loaders label classes by sorted folder name: every split must have the same names.
    dirs = list(classes_of)
    for task_dir in dirs[1:]:
        first, here = classes_of[dirs[0]], classes_of[task_dir]
        if here != first:
            only = [f'{name} only in {dirs[0]}' for name in sorted(set(first) - set(here))]
            only += [f'{name} only in {task_dir}' for name in sorted(set(here) - set(first))]
            problems.append(f'{task}: class folders differ between splits ({", ".join(only)})')
    return problems


def verification_problems(data_root, task, expected, pairs_file, found_classes=None,
                          found_pairs=None):
    """The verification task (face layout): its train identities, its LFW tree and at least 10
    resolving pairs, whatever the splits (it always selects on LFW). `found_classes` receives its
    number of identities, `found_pairs` (dicts) 'pairs' and 'skipped'."""
    problems, classes = _split_problems(task, task_split_dir(data_root, task, 'train', 'face'), expected)
    if classes is not None and found_classes is not None:
        found_classes.setdefault(task, len(classes))
    lfw = lfw_root(data_root, task)
    if not os.path.isdir(lfw):
        problems.append(f'{task}: no LFW folder {lfw} (<person>/<person>_<NNNN>.jpg)')
    pairs, skipped, pair_problems = pairs_problems(pairs_file, lfw, task)
    if os.path.isdir(lfw) or not os.path.isfile(pairs_file):
        problems += pair_problems
    if found_pairs is not None:
        found_pairs.update(pairs=len(pairs), skipped=skipped)
    return problems


def data_problems(data_root, tasks, num_classes, splits=('train', 'test'), layout='cifar',
                  found_classes=None, pairs_file=DEFAULT_PAIRS_FILE,
                  verification_task=VERIFICATION_TASK, found_pairs=None):
    """Every problem of the tasks' folders under `<data_root>/<split>/<task>/<class>/` (cifar)
    or `<data_root>/<task>/<split>/<class>/` (finegrained, face). `found_classes`, a dict,
    receives each task's number of class folders; `found_pairs` the face layout's pair counts."""
    problems = []
    if not tasks:
        problems.append('no tasks given (TASKS is empty)')
    if not os.path.isdir(data_root):
        return problems + [f'no data folder {data_root}']
    present = []
    for split in splits:
        split_dir = os.path.join(data_root, split)
        if layout in TASK_FIRST or os.path.isdir(split_dir):
            present.append(split)
        else:
            problems.append(f'no folder {split_dir}')  # once, not once per task
    counts = {}
    for task in tasks:
        counts[task] = counts.get(task, 0) + 1
    for task, count in counts.items():
        if count > 1:
            problems.append(f'{task}: listed {count} times in TASKS')
        expected = _expected_classes(num_classes, task)
        if layout == 'face' and task == verification_task:
            problems += verification_problems(data_root, task, expected, pairs_file, found_classes,
                                              found_pairs)
            continue
        problems += _task_problems(data_root, task, expected, present, layout, found_classes)
    return problems


def goal_problems(goals_file, tasks):
    """A goal file that is missing or unreadable, or each task without a goal in it."""
    if not os.path.isfile(goals_file):
        return [f'no goal file {goals_file}']
    try:
        goals = read_goals(goals_file, check=False)  # the parser the training stages use
    except CPGError:
        return [f'cannot read goal file {goals_file} (not a JSON object of task -> accuracy)']
    except (OSError, TypeError) as exc:  # no read permission; a null or list value
        return [f'cannot read goal file {goals_file} ({exc})']
    return [f'{task}: no goal in {goals_file}' for task in dict.fromkeys(tasks) if task not in goals]


def goal_value_problems(goals_file, tasks):
    """Each task's goal outside [0, 1] (a percentage such as 65.8 where 0.658 is meant)."""
    try:
        goals = read_goals(goals_file, check=False)
    except (CPGError, OSError, TypeError):
        return []   # reported by goal_problems
    wanted = dict.fromkeys(tasks)
    return goal_problems_of(goals_file, {t: g for t, g in goals.items() if t in wanted})


def fraction_problems(pairs):
    """Each KNOB=VALUE of `pairs` whose value is not a fraction in [0, 1)."""
    problems = []
    for pair in pairs:
        name, _, value = pair.partition('=')
        problem = check_fraction(name, value)
        if problem:
            problems.append(problem)
    return problems


def image_size_problems(data_root, tasks, size, splits):
    """cifar layout: the first image of every class folder must be size x size pixels."""
    from PIL import Image
    problems = []
    for task in dict.fromkeys(tasks):
        for split in splits:
            task_dir = task_split_dir(data_root, task, split)
            for name in class_folders(task_dir):
                folder = os.path.join(task_dir, name)
                first = next(iter(image_names(folder)), None)
                if first is None:
                    continue   # reported by data_problems
                path = os.path.join(folder, first)
                try:
                    with Image.open(path) as img:
                        width, height = img.size   # the header only: nothing is decoded
                except (OSError, ValueError) as exc:
                    problems.append(f'{task}: cannot read image {path} ({exc})')
                    break
                if (width, height) != (size, size):
                    problems.append(f'{task}: images are {width}x{height} ({path}), the model takes '
                                    f'{size}x{size}; resize them to {size}x{size}')
                    break
            else:
                continue
            break
    return problems


def check_tasks(data_root, tasks, num_classes, goals_file=None, splits=('train', 'test'),
                layout='cifar', pairs_file=DEFAULT_PAIRS_FILE, verification_task=VERIFICATION_TASK):
    """Every problem of `tasks`, one string each (empty: all is well).

    num_classes: an int for every task, a {task: int} mapping, or None (no count check).
    goals_file: when given, every task needs a goal in it.
    pairs_file, verification_task: the face layout's LFW pairs and the task they belong to.
    """
    problems = data_problems(data_root, tasks, num_classes, splits, layout,
                             pairs_file=pairs_file, verification_task=verification_task)
    if goals_file is not None:
        problems += goal_problems(goals_file, tasks) + goal_value_problems(goals_file, tasks)
    return problems


def error_line(data, goals, layout='cifar', values=()):
    """The one stderr line: every problem, then what to do (`values`: out-of-range values, whose
    problem text says the expected form)."""
    data_hint = {'finegrained': FINEGRAINED_DATA_HINT, 'face': FACE_DATA_HINT}.get(layout, DATA_HINT)
    baseline = {'finegrained': 'experiment2/baseline_imagenet.sh',
                'face': 'experiment3/baseline_face.sh'}.get(layout)
    goal_hint = GOAL_HINT
    if baseline:
        goal_hint = goal_hint.replace('experiment1/baseline_cifar100.sh', baseline)
    hints = [hint for hint, needed in ((data_hint, data), (goal_hint, goals)) if needed]
    fix = f'; to fix: {", and ".join(hints)}' if hints else ''
    line = f'error: preflight: {"; ".join(list(data) + list(goals) + list(values))}{fix}; nothing was trained'
    return line.replace('\n', ' ')


def check_args(parser, args):
    """Reject class counts that cannot be checked (one line, exit 1)."""
    if args.num_classes is None:
        if args.layout == 'cifar':
            parser.error('--num_classes (NUM_CLASSES) is required for the cifar layout')
        return
    if len(args.num_classes) not in (1, len(args.tasks)):
        parser.error(f'{len(args.num_classes)} values of --num_classes for {len(args.tasks)} tasks; '
                     f'give one value, or one per task')
    if min(args.num_classes) < 1:
        parser.error(f'--num_classes (NUM_CLASSES) must be at least 1, got {min(args.num_classes)}')


def main(args):
    num_classes = None
    if args.num_classes is not None:
        num_classes = args.num_classes[0]
        if len(args.num_classes) > 1:
            num_classes = dict(zip(args.tasks, args.num_classes))
    found, pairs = {}, {}
    data = data_problems(args.data_root, args.tasks, num_classes, tuple(args.splits), args.layout, found,
                         args.pairs_file, args.verification_task, pairs)
    if args.image_size is not None and args.layout == 'cifar' and not data:
        data += image_size_problems(args.data_root, args.tasks, args.image_size, args.splits)
    goals, values = [], fraction_problems(args.fractions)
    if args.goals_file is not None:
        goals = goal_problems(args.goals_file, args.tasks)
        values = goal_value_problems(args.goals_file, args.tasks) + values
    if data or goals or values:
        sys.stderr.write(error_line(data, goals, args.layout, values) + '\n')
        return 1
    if num_classes is None:
        classes = 'classes ' + ', '.join(f'{task} {found.get(task)}' for task in dict.fromkeys(args.tasks))
    elif isinstance(num_classes, int):
        classes = f'{num_classes} classes each'
    else:
        classes = 'class counts as given'
    notes = f', goals in {args.goals_file}' if args.goals_file is not None else ''
    if pairs:
        notes += (f', {args.verification_task}: {pairs["pairs"]} LFW pairs in {args.pairs_file} '
                  f'({pairs["skipped"]} skipped for missing images)')
    count = len(args.tasks)
    print(f'preflight: {count} task{"s" if count != 1 else ""} OK ({args.data_root}: '
          f'{"/".join(args.splits)}, {classes}{notes})')
    return 0


if __name__ == '__main__':
    parser = get_args_parser()
    args = parser.parse_args()
    check_args(parser, args)
    sys.exit(main(args))
