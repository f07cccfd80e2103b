"""Check a config's data sets before a run: paths, annotation files, images, label maps and classes.

    python tools/check_datasets.py CONFIG [--splits train val test] [--cfg-options KEY=VALUE ...]

Reads what the config's datasets and evaluators will read and stops at the first problem with a message that
names the file or value and the fix (tools/dataset_checks.py): a missing data root or image, an annotation
file that is not COCO's format, classes the file lacks or lists in another order, heads whose num_classes does
not match, label maps with values beyond the classes. Training and testing do not run these checks themselves
(mmdet's and mmseg's tools read the data once); run this after preparing a data set, or when a run stops in
pycocotools or a data transform. ``--cfg-options data_root=PATH`` moves every dataset path, as in tools/train.py.
"""
import argparse
import sys

from mmengine.config import DictAction

from config_utils import load_config
from dataset_checks import DataError, check_datasets

SPLITS = ('train', 'val', 'test')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Check a config's data sets before training or testing")
    parser.add_argument('config', help='config file path')
    parser.add_argument('--splits', nargs='+', choices=SPLITS, default=list(SPLITS),
                        help='the dataloaders (and evaluators) to check (default: all three)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs (e.g. data_root=PATH)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    try:
        check_datasets(cfg, tuple(args.splits))
    except DataError as error:
        sys.exit(f'error: {error}')
    print(f'{args.config}: the {", ".join(args.splits)} data sets passed the checks')


if __name__ == '__main__':
    main()
