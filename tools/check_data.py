"""Validate a data folder before a multi-day run: layout, class and image counts, unreadable files.

  python tools/check_data.py --experiment 2 --data_root data/finegrained [--tasks ...] [--workers N]
  python tools/check_data.py --experiment 1 --data_root data/cifar100_org
  python tools/check_data.py --experiment 3 --data_root data/face --pairs_file face_data/lfw_pairs.txt

Layouts (the loaders' own discovery rules, utils/folder_tasks.py):
  experiment 1: DATA_ROOT/{train,test}/<task>/<class>/<image>
  experiment 2: DATA_ROOT/<task>/{train,test}/<class>/<image>; imagenet: DATA_ROOT/imagenet/{train,val}
  experiment 3: DATA_ROOT/<task>/{train,val}/<class>/<image> (val: the test split); the verification
                task's train classes are identities, its val folder the LFW tree <person>/<image>
Default tasks: experiment 1 the 20 CIFAR-100 super-classes, experiment 2 imagenet cubs_cropped
stanford_cars_cropped flowers wikiart sketches, experiment 3 face_verification gender emotion
age0 age1 age2 age3 age4.

Checks: every task/split folder exists and holds class folders with images; train and test have
the same class names; every image opens and FULLY decodes with PIL (in parallel, a tqdm bar on
stderr); experiment 1: the images of a task/split share one size (the in-memory loader needs it);
experiment 3: the pairs file (--pairs_file) resolves at least 10 pairs to LFW images (the LFW tree
is checked whatever --splits: the verification task always selects on it; its people are not
compared with the training identities), and how many resolve and how many are skipped is printed.
Prints a table (task, split, classes, images, images per class) on stdout. Exit 0 when clean;
else exit 1 with ONE stderr line "error: check_data: <problem>; <problem>; ...; to fix: ...".
--bad_list FILE writes every unreadable path, one per line (the error line names the first 20).
"""
import argparse
import multiprocessing
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.cifar100_config import CIFAR100_TASKS  # noqa: E402
from utils.data import available_cpus  # noqa: E402
from utils.folder_tasks import class_folders, image_names  # noqa: E402
from utils.finegrained_dataset import EXPERIMENT2_TASKS, PAPER_CLASSES  # noqa: E402
from utils.finegrained_dataset import split_dir as finegrained_split_dir  # noqa: E402
from utils.face_dataset import DEFAULT_PAIRS_FILE, FACE_TASKS, VERIFICATION_TASK, lfw_root  # noqa: E402
from utils.face_dataset import PAPER_CLASSES as FACE_PAPER_CLASSES  # noqa: E402
from utils.face_dataset import split_dir as face_split_dir  # noqa: E402
from utils.verification import pairs_problems  # noqa: E402

SPLITS = ('train', 'test')
NAMED_BAD_FILES = 20  # unreadable files named in the error line
HINTS = {1: 'see docs/experiment1.md "Data" (tools/cifar100_to_png.py)',
         2: 'see docs/experiment2.md "Data"',
         3: 'see docs/experiment3.md "Data" (--pairs_file: the LFW pairs list)'}
DEFAULT_TASKS = {1: CIFAR100_TASKS, 2: EXPERIMENT2_TASKS, 3: FACE_TASKS}


class CheckParser(argparse.ArgumentParser):
    """A bad flag is one 'error: check_data:' line and exit 1 too."""

    def error(self, message):
        sys.stderr.write(f'error: check_data: {message}; see python tools/check_data.py --help\n')
        sys.exit(1)


def get_args_parser():
    parser = CheckParser('check_data.py', description=__doc__.splitlines()[0])
    parser.add_argument('--experiment', type=int, choices=(1, 2, 3), required=True,
                        help='1: DATA_ROOT/<split>/<task>/<class>; 2: DATA_ROOT/<task>/<split>/<class>; '
                             '3: DATA_ROOT/<task>/{train,val}/<class> plus LFW pairs')
    parser.add_argument('--data_root', required=True, help='the data folder to check')
    parser.add_argument('--tasks', nargs='+', default=None,
                        help='task folder names (default: the experiment\'s task sequence)')
    parser.add_argument('--splits', nargs='+', choices=SPLITS, default=list(SPLITS),
                        help='splits to check ("train" alone when VAL_FRACTION > 0 and no test split yet)')
    parser.add_argument('--workers', type=int, default=None,
                        help='decoding processes (default: every core; 0 or 1: in this process)')
    parser.add_argument('--bad_list', default=None, help='write every unreadable path to this file')
    # Experiment 3
    parser.add_argument('--pairs_file', default=DEFAULT_PAIRS_FILE,
                        help='experiment 3: the LFW pairs list (header line, then "name i j" or '
                             '"name1 i name2 j")')
    parser.add_argument('--verification_task', default=VERIFICATION_TASK,
                        help='experiment 3: the task whose val folder is the LFW tree')
    return parser


def split_dir(data_root, task, split, experiment):
    """The folder holding `task`'s class folders of `split` (imagenet's and the face tasks' test
    split: val/)."""
    if experiment == 1:
        return os.path.join(data_root, split, task)
    if experiment == 3:
        return face_split_dir(data_root, task, split)
    return finegrained_split_dir(data_root, task, split)


def _one_line(text):
    return ' '.join(str(text).split())


def scan(data_root, tasks, splits, experiment, verification_task=None):
    """List the folders. Returns (rows, problems, files): a table row per task/split,
    the layout problems, and (task, split, path) of every image. The verification task (its test
    split: LFW people, not classes) is listed in both splits and not compared across them."""
    rows, problems, files = [], [], []
    for task in tasks:
        classes_of = {}
        verification = task == verification_task
        for split in (SPLITS if verification else splits):
            folder = split_dir(data_root, task, split, experiment)
            if not os.path.isdir(folder):
                problems.append(f'{task}: no folder {folder}')
                continue
            try:
                classes = class_folders(folder)
                counts = []
                for name in classes:
                    names = image_names(os.path.join(folder, name))
                    counts.append(len(names))
                    files += [(task, split, os.path.join(folder, name, n)) for n in names]
            except OSError as exc:
                problems.append(f'{task}: cannot list {exc.filename or folder} ({exc.strerror or exc})')
                continue
            classes_of[split] = (folder, classes)
            if not classes:
                problems.append(f'{task}: no class folders in {folder}')
            empty = [name for name, count in zip(classes, counts) if count == 0]
            if empty:
                shown = ', '.join(os.path.join(folder, name) for name in empty[:3])
                more = f' and {len(empty) - 3} more' if len(empty) > 3 else ''
                problems.append(f'{task}: {len(empty)} class folder(s) without images ({shown}{more})')
            rows.append({'task': task, 'split': split, 'folder': folder, 'classes': len(classes),
                         'images': sum(counts), 'min': min(counts, default=0),
                         'max': max(counts, default=0)})
        if len(classes_of) == 2 and not verification:
            (train_dir, train), (test_dir, test) = classes_of['train'], classes_of['test']
            if train != test:
                only = [f'{n} only in {train_dir}' for n in sorted(set(train) - set(test))][:3]
                only += [f'{n} only in {test_dir}' for n in sorted(set(test) - set(train))][:3]
                problems.append(f'{task}: class folders differ between train ({len(train)}) and '
                                f'test ({len(test)}) ({", ".join(only)})')
    return rows, problems, files


def decode(path):
    """(path, (width, height) or None, error or None): open and fully decode one image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # e.g. palette transparency, large images
            with Image.open(path) as img:
                img.load()  # every pixel: a truncated or corrupt file fails here
                size = img.size
                img.convert('RGB')
        return path, size, None
    except Exception as exc:  # noqa: BLE001 - anything PIL raises makes the file unusable
        return path, None, _one_line(f'{type(exc).__name__}: {exc}')


def decode_all(paths, workers):
    """{path: (size, error)} for every path, decoded by `workers` processes (<= 1: here)."""
    results = {}
    bar = tqdm(total=len(paths), desc='decoding', unit='img', file=sys.stderr, disable=None)
    try:
        if workers <= 1 or len(paths) < 2:
            for path in paths:
                _, size, error = decode(path)
                results[path] = (size, error)
                bar.update()
        else:
            chunk = max(1, min(256, len(paths) // (workers * 8)))
            with multiprocessing.Pool(workers) as pool:
                for path, size, error in pool.imap_unordered(decode, paths, chunksize=chunk):
                    results[path] = (size, error)
                    bar.update()
    finally:
        bar.close()
    return results


def size_problems(files, results):
    """Experiment 1: every task/split needs images of one size (one decoded tensor)."""
    first, differing = {}, {}
    for task, split, path in files:
        size = results[path][0]
        if size is None:
            continue
        key = (task, split)
        first.setdefault(key, (path, size))
        if size != first[key][1]:
            differing.setdefault(key, (path, size))
    problems = []
    for (task, split), (path, size) in differing.items():
        other, other_size = first[(task, split)]
        problems.append(f'{task}: images of different sizes in {split} ({other} is '
                        f'{other_size[0]}x{other_size[1]}, {path} is {size[0]}x{size[1]}); '
                        'experiment 1 needs one size per task')
    return problems


def paper_classes(row, experiment, verification_task=None):
    """The paper's class count of a table row's task, or None (LFW: people, not classes)."""
    if experiment == 1:
        return 5
    if experiment == 2:
        return PAPER_CLASSES.get(row['task'])
    if row['task'] == verification_task:
        return FACE_PAPER_CLASSES[VERIFICATION_TASK] if row['split'] == 'train' else None
    return FACE_PAPER_CLASSES.get(row['task'])


def table(rows, experiment, verification_task=None):
    """The counts table (one line per task and split)."""
    width = max([len('task')] + [len(r['task']) for r in rows])
    lines = [f'{"task":<{width}}  split  classes    images  per class (min-max)  folder']
    for r in rows:
        note = ''
        expected = paper_classes(r, experiment, verification_task)
        if expected is not None and r['classes'] != expected:
            note = f'  [the paper has {expected} classes]'
        elif experiment == 3 and r['task'] == verification_task and r['split'] == 'test':
            note = '  [LFW: people, not classes]'
        per_class = f'{r["min"]}-{r["max"]}'
        lines.append(f'{r["task"]:<{width}}  {r["split"]:<5}  {r["classes"]:>7}  {r["images"]:>8}  '
                     f'{per_class:>19}  {r["folder"]}{note}')
    return '\n'.join(lines)


def check(data_root, tasks, splits, experiment, workers, verification_task=VERIFICATION_TASK,
          pairs_file=DEFAULT_PAIRS_FILE):
    """(rows, problems, unreadable [(path, error)], images decoded, pairs note or None)."""
    if not os.path.isdir(data_root):
        return [], [f'no data folder {data_root}'], [], 0, None
    verification_task = verification_task if experiment == 3 else None
    rows, problems, files = scan(data_root, tasks, splits, experiment, verification_task)
    note = None
    if verification_task in tasks:
        lfw = lfw_root(data_root, verification_task)
        pairs, skipped, pair_problems = pairs_problems(pairs_file, lfw, verification_task)
        if os.path.isdir(lfw) or not os.path.isfile(pairs_file):  # a missing LFW: reported by scan
            problems += pair_problems
        same = sum(1 for *_, is_same in pairs if is_same)
        if os.path.isfile(pairs_file) and not pair_problems:
            note = (f'pairs: {pairs_file}: {len(pairs)} resolve to images under {lfw} ({same} same '
                    f'person, {len(pairs) - same} different), {skipped} skipped for missing images')
    results = decode_all([path for _, _, path in files], workers)
    unreadable = sorted((path, error) for path, (_, error) in results.items() if error is not None)
    if experiment == 1:
        problems += size_problems(files, results)
    return rows, problems, unreadable, len(files), note


def error_line(problems, unreadable, experiment, bad_list=None):
    """The one stderr line: layout problems, then the unreadable files, then what to do."""
    parts = list(problems)
    if unreadable:
        named = ', '.join(f'{path} ({error})' for path, error in unreadable[:NAMED_BAD_FILES])
        more = len(unreadable) - NAMED_BAD_FILES
        listed = f'; all in {bad_list}' if bad_list else '; --bad_list FILE lists them all'
        more_text = f' and {more} more{listed}' if more > 0 else ''
        parts.append(f'{len(unreadable)} unreadable image(s): {named}{more_text}')
    fixes = []
    if problems:
        fixes.append(HINTS[experiment])
    if unreadable:
        fixes.append('delete or replace the unreadable files')
    return _one_line(f'error: check_data: {"; ".join(parts)}; to fix: {", and ".join(fixes)}')


def main(args):
    tasks = args.tasks or list(DEFAULT_TASKS[args.experiment])
    workers = available_cpus() if args.workers is None else args.workers
    start = time.time()
    rows, problems, unreadable, count, pairs_note = check(
        args.data_root, tasks, tuple(args.splits), args.experiment, workers,
        args.verification_task, args.pairs_file)
    if rows:
        print(table(rows, args.experiment, args.verification_task))
    if pairs_note:
        print(pairs_note)
    if args.bad_list and unreadable:
        with open(args.bad_list, 'w') as f:
            f.writelines(f'{path}\n' for path, _ in unreadable)
    if problems or unreadable:
        sys.stderr.write(error_line(problems, unreadable, args.experiment, args.bad_list) + '\n')
        return 1
    print(f'check_data: OK: {len(tasks)} task(s), {count} images decoded '
          f'({args.data_root}, experiment {args.experiment}, {"/".join(args.splits)}) '
          f'in {time.time() - start:.1f}s')
    return 0


if __name__ == '__main__':
    parser = get_args_parser()
    arguments = parser.parse_args()
    if arguments.workers is not None and arguments.workers < 0:
        parser.error(f'--workers must be >= 0, got {arguments.workers}')
    sys.exit(main(arguments))
