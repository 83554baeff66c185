"""Convert the official CIFAR-100 python archive to <out>/{train,test}/<coarse>/<fine>/<index>.png.

Accepts `cifar-100-python.tar.gz` (read in place, nothing is extracted) or its extracted folder.
Nothing is downloaded. Existing PNGs are skipped, so a rerun only fills in what is missing.
"""

import argparse
import io
import os
import pickle
import sys
import tarfile
import zlib

import numpy as np
from PIL import Image
from tqdm import tqdm

SPLITS = ('train', 'test')
MEMBERS = ('train', 'test', 'meta')
IMAGE_SIZE = 32
DOWNLOAD_HINT = ('download cifar-100-python.tar.gz from '
                 'https://www.cs.toronto.edu/~kriz/cifar.html and pass its path '
                 '(or its extracted folder) with --archive')


class ConversionError(Exception):
    """A one-line, user-facing problem with the archive or the output folder."""


def _one_line(exc):
    """Collapse an exception text onto one line (tarfile's messages span several)."""
    return ' '.join(str(exc).split())


def get_args_parser():
    """Command-line flags of the converter."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--archive', required=True,
                        help='cifar-100-python.tar.gz or the extracted cifar-100-python/ folder')
    parser.add_argument('--out', default='data/cifar100_org', help='output data folder')
    return parser


def _unpickle(stream, name):
    """Load one CIFAR pickle (bytes keys) from a binary stream."""
    try:
        return pickle.load(stream, encoding='bytes')
    except Exception as exc:  # any unpickling failure means a damaged or foreign file
        raise ConversionError(f'cannot unpickle {name} ({type(exc).__name__}: {_one_line(exc)}); '
                              f'the archive looks damaged, {DOWNLOAD_HINT}') from None


def _read_tar(path):
    """Return {'train','test','meta': dict} read directly from the tar.gz members."""
    try:
        with tarfile.open(path, 'r:*') as tar:
            found = {}
            for member in tar.getmembers():
                base = member.name.rstrip('/').rsplit('/', 1)[-1]
                if member.isfile() and base in MEMBERS and base not in found:
                    found[base] = _unpickle(io.BytesIO(tar.extractfile(member).read()),
                                            f'{path}:{member.name}')
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ConversionError(f'cannot read archive {path} ({_one_line(exc)}); '
                              f'{DOWNLOAD_HINT}') from None
    missing = [m for m in MEMBERS if m not in found]
    if missing:
        raise ConversionError(f'archive {path} has no {"/".join(missing)} file(s); '
                              'it is incomplete or not the CIFAR-100 python version, '
                              f'{DOWNLOAD_HINT}')
    return found


def _read_folder(path):
    """Return {'train','test','meta': dict} from an extracted folder (or its parent)."""
    nested = os.path.join(path, 'cifar-100-python')
    # Accept the parent of cifar-100-python/ too, as users often pass the extraction folder.
    use_nested = not os.path.isfile(os.path.join(path, 'train')) and os.path.isdir(nested)
    folder = nested if use_nested else path
    found = {}
    for name in MEMBERS:
        file_path = os.path.join(folder, name)
        if not os.path.isfile(file_path):
            raise ConversionError(f'{file_path} not found; the folder must hold the train, test '
                                  f'and meta files of cifar-100-python, {DOWNLOAD_HINT}')
        try:
            with open(file_path, 'rb') as f:
                found[name] = _unpickle(f, file_path)
        except OSError as exc:
            raise ConversionError(f'cannot read {file_path} ({_one_line(exc)}); '
                                  'check its permissions') from None
    return found


def load_cifar100(path):
    """Read the archive or folder at `path`; returns (splits, fine_names, coarse_names)."""
    if not os.path.exists(path):
        raise ConversionError(f'archive not found: {path}; {DOWNLOAD_HINT}')
    raw = _read_folder(path) if os.path.isdir(path) else _read_tar(path)
    try:
        fine_names = [n.decode() for n in raw['meta'][b'fine_label_names']]
        coarse_names = [n.decode() for n in raw['meta'][b'coarse_label_names']]
        splits = {}
        for split in SPLITS:
            data = np.asarray(raw[split][b'data'], dtype=np.uint8)  # (N, 3072), R, G, B planes
            fine = np.asarray(raw[split][b'fine_labels'], dtype=np.int64)  # (N,)
            coarse = np.asarray(raw[split][b'coarse_labels'], dtype=np.int64)  # (N,)
            if data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE \
                    or len(fine) != len(data) or len(coarse) != len(data):
                raise ValueError(f'{split} data has shape {data.shape} with {len(fine)} labels')
            # Channel-major planes -> (N, 32, 32, 3) HWC as PIL expects.
            images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
            splits[split] = (images, fine, coarse)
    except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise ConversionError(f'{path} does not have the CIFAR-100 python layout '
                              f'({_one_line(repr(exc))}); '
                              f'{DOWNLOAD_HINT}') from None
    return splits, fine_names, coarse_names


def write_split(images, fine, coarse, fine_names, coarse_names, split_dir, desc):
    """Write one split's PNGs, skipping existing ones; returns the number newly written."""
    written = 0
    for index in tqdm(range(len(images)), desc=desc, unit='img'):
        folder = os.path.join(split_dir, coarse_names[coarse[index]], fine_names[fine[index]])
        target = os.path.join(folder, f'{index:05d}.png')
        if os.path.exists(target):
            continue
        os.makedirs(folder, exist_ok=True)
        # Write then rename so an interrupted run never leaves a truncated PNG that reruns skip.
        partial = target + '.part'
        Image.fromarray(images[index]).save(partial, format='PNG')
        os.replace(partial, target)
        written += 1
    return written


def main(args):
    """Convert the archive; returns the process exit status (0 ok, 1 on a clear error)."""
    try:
        splits, fine_names, coarse_names = load_cifar100(args.archive)
        counts, new = {}, 0
        for split in SPLITS:
            images, fine, coarse = splits[split]
            new += write_split(images, fine, coarse, fine_names, coarse_names,
                               os.path.join(args.out, split), desc=f'writing {split}')
            counts[split] = len(images)
    except ConversionError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    except OSError as exc:
        print(f'error: cannot write under {args.out} ({_one_line(exc)}); choose a writable --out',
              file=sys.stderr)
        return 1
    tasks = len(set(int(c) for split in SPLITS for c in splits[split][2]))
    print(f'{args.out}: train {counts["train"]} images, test {counts["test"]} images, '
          f'{tasks} tasks ({new} newly written, {sum(counts.values()) - new} already present)')
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
