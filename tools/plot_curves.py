"""Training and validation curves of a run, in one PNG, from the scalars mmengine logs.

    python tools/plot_curves.py WORK_DIR [--keys loss lr bbox_mAP ...] [--out FILE.png]

WORK_DIR is a run's work dir (``work_dirs/<config>``), one of its ``<timestamp>`` dirs, or a
``vis_data/scalars.json`` file. mmengine's LoggerHook writes one JSON line per logged training iteration
(``loss``, ``loss_*``, ``lr``, ``step`` = iteration) and one per validation (the metrics, ``step`` = epoch for
epoch-based runs, iteration for iteration-based ones) into ``<timestamp>/vis_data/scalars.json``. A resumed run
has several timestamp dirs: they are read in order, and a later one replaces what an earlier one logged from its
first iteration on (the iterations after the resumed checkpoint were run again).

Each key is matched against the logged names exactly or as their last part (``bbox_mAP`` is
``coco/bbox_mAP``). Losses, learning rates and validation metrics get a panel each. Without ``--keys``: the
total loss, the learning rate and the usual metrics (mAP and mAP@50 of boxes and masks; mIoU, mAcc, aAcc),
whichever the run logged (``base_lr`` is the schedule's rate, ``lr`` that of the first parameter group, which
layer-wise decay lowers). Writes ``WORK_DIR/curves.png`` unless ``--out`` says otherwise, and prints its path.
"""
import argparse
import glob
import json
import os.path as osp

import matplotlib

matplotlib.use('Agg')  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DEFAULT_KEYS = ('loss', 'base_lr', 'lr', 'bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50', 'mIoU', 'mAcc',
                'aAcc')
# Bookkeeping that LoggerHook writes beside the scalars: not curves.
NOT_CURVES = ('step', 'epoch', 'iter', 'time', 'data_time', 'memory')


def scalars_files(path):
    """The scalars.json files of a run, oldest first (timestamp dirs sort by time)."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise SystemExit(f'error: {path} is neither a work dir nor a scalars.json file')
    candidates = [osp.join(path, 'scalars.json'), osp.join(path, 'vis_data', 'scalars.json')]
    found = [file for file in candidates if osp.isfile(file)]
    found = found or sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
    if not found:
        raise SystemExit(f'error: no vis_data/scalars.json under {path}: give the work dir of a training run '
                         '(tools/train.py writes WORK_DIR/<timestamp>/vis_data/scalars.json once it logs)')
    return found


def read_records(file):
    with open(file) as stream:
        try:
            return [json.loads(line) for line in stream if line.strip()]
        except json.JSONDecodeError as error:
            raise SystemExit(f'error: {file} is not mmengine\'s scalars log (one JSON object a line): {error}')


def merge_runs(files):
    """(training records, validation records) of all files; a resumed run replaces the steps it ran again."""
    train, val = [], []
    for file in files:
        records = read_records(file)
        run_train = [r for r in records if is_training(r)]
        run_val = [r for r in records if not is_training(r)]
        if run_train:
            first = run_train[0]['step']
            train = [r for r in train if r['step'] < first]
            val = [r for r in val if r['step'] < val_step_of(first, run_train[0])]
        train += run_train
        val += run_val
    return train, val


def is_training(record):
    # Training lines carry the learning rate; validation lines carry only metrics and timings.
    return any(key == 'lr' or key.endswith('_lr') for key in record)


def val_step_of(iteration, train_record):
    """The validation ``step`` that corresponds to a training iteration: its epoch in epoch-based runs."""
    return train_record['epoch'] if 'epoch' in train_record else iteration


def match(key, names):
    return sorted(name for name in names if name == key or name.split('/')[-1] == key)


def select(keys, train, val, explicit):
    """{panel title: [(name, [(step, value)])]} for the requested keys; an unknown explicit key is an error."""
    train_names = {k for r in train for k in r if k not in NOT_CURVES}
    val_names = {k for r in val for k in r if k not in NOT_CURVES}
    panels = {}
    for key in keys:
        names = [('train', n) for n in match(key, train_names)] + [('val', n) for n in match(key, val_names)]
        if not names and explicit:
            raise SystemExit(f"error: --keys {key}: the run logged no such scalar; it logged: "
                             f"{', '.join(sorted(train_names | val_names))}")
        for split, name in names:
            records = train if split == 'train' else val
            points = [(r['step'], r[name]) for r in records if isinstance(r.get(name), (int, float))]
            panels.setdefault(panel_of(split, name), []).append((name, points))
    if not panels:
        raise SystemExit(f"error: none of {', '.join(keys)} is in the run's log; pass --keys with some of: "
                         f"{', '.join(sorted(train_names | val_names))}")
    return panels


def panel_of(split, name):
    if split == 'val':
        return 'validation'
    if 'loss' in name:
        return 'training loss'
    if name == 'lr' or name.endswith('_lr'):
        return 'learning rate'
    return 'training'


def plot(panels, val_x_label, title, out):
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, (panel, curves) in zip(axes[0], panels.items()):
        for name, points in curves:
            steps, values = zip(*points) if points else ((), ())
            # Validation often has few points (the demo evaluates once): markers, and the last value in the legend.
            label = f'{name} ({values[-1]:.3g})' if panel == 'validation' and values else name
            axis.plot(steps, values, marker='o' if len(points) < 20 else None, label=label)
        axis.set_title(panel)
        axis.set_xlabel(val_x_label if panel == 'validation' else 'iteration')
        axis.set_xlim(left=0)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize='small')
        if panel == 'learning rate':
            axis.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Plot a run's training and validation curves into one PNG")
    parser.add_argument('work_dir', help='work dir of a training run, a <timestamp> dir, or a scalars.json file')
    parser.add_argument('--keys', nargs='+', help=f"scalars to plot (default: {' '.join(DEFAULT_KEYS)}, "
                        'those logged)')
    parser.add_argument('--out', help='PNG to write (default: WORK_DIR/curves.png)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    train, val = merge_runs(scalars_files(args.work_dir))
    panels = select(args.keys or DEFAULT_KEYS, train, val, explicit=bool(args.keys))
    # LoggerHook logs validation by epoch in epoch-based runs (training lines then carry 'epoch').
    val_x_label = 'epoch' if any('epoch' in r for r in train) else 'iteration'
    out = args.out or osp.join(args.work_dir if osp.isdir(args.work_dir) else osp.dirname(args.work_dir),
                               'curves.png')
    plot(panels, val_x_label, osp.basename(osp.normpath(args.work_dir)), out)
    print(f'Curves written to {out}')
    return out


if __name__ == '__main__':
    main()
