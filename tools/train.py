"""Train a ConvNeXt detector or segmentor: mmdet's and mmseg's tools/train.py, also on a machine without a GPU.

    python tools/train.py configs/cascade/convnext_t_3x.py [--work-dir DIR] [--resume [CHECKPOINT]] [--amp]
        [--auto-scale-lr] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

A config trains the same here as under mmdet's or mmseg's own tools/train.py: its hooks and settings are all in
the file. The demo is a config too: ``python tools/train.py configs/demo/cascade_convnext_t_demo.py`` (``make
demo``). What this tool adds: without CUDA, the ``--cfg-options`` that run the config on the CPU (fp32 instead of
the config's fp16 AMP, bfloat16 with ``--amp``; for distributed runs gloo and BN), printed as the options they are
(tools/config_utils.py), and distributed runs on CPUs; ``--cfg-options data_root=PATH`` moves all dataset paths
of the config to PATH; errors that name the fix. Several GPUs or nodes: tools/dist_train.sh (torchrun),
tools/slurm_train.sh. Checking a data set before a long run: tools/check_datasets.py.
"""
import argparse
import os
import sys

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from config_utils import (check_decay_constructor, config_from_command_line, cuda_available, fit_config_to_machine,
                          init_distributed_on_cpu, is_main_process, lost_a_peer)
from convnext_mm.checkpoint import CheckpointError
from convnext_mm.mixed_precision import UnsupportedModelError
from dataset_checks import CHECK_HINT


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a ConvNeXt detector (mmdet) or segmentor (mmseg)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models (default: work_dirs/CONFIG_NAME)')
    parser.add_argument(
        '--amp', action='store_true',
        help='mixed-precision training: fp16 AmpOptimWrapper on a CUDA GPU, bf16 CPUAmpOptimWrapper on a CPU')
    parser.add_argument('--auto-scale-lr', action='store_true', help='enable automatically scaling LR')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or without a path from the latest checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs (e.g. train_dataloader.batch_size=4, '
        'data_root=PATH, model.backbone.init_cfg.checkpoint=PATH); a list value is key="[a,b]" or key=a,b, '
        'quotation marks needed, no white space')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_config(args):
    """The config file with the command line applied, as mmdet's train.py does it."""
    cfg = config_from_command_line(args)
    try:
        check_decay_constructor(cfg.get('optim_wrapper', {}))
    except ValueError as error:
        raise SystemExit(f'error: {error}')

    if args.amp and cuda_available():  # as mmdet's and mmseg's --amp; on a CPU, CPUAmpOptimWrapper (below)
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        if 'enable' not in cfg.get('auto_scale_lr', {}) or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit(f'error: --auto-scale-lr needs auto_scale_lr=dict(enable=..., base_batch_size=...) in '
                             f'{args.config}')
        cfg.auto_scale_lr.enable = True

    # A given checkpoint comes before the automatic search of the work dir.
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # Without CUDA: the --cfg-options that run the config here, applied and printed.
    for line in fit_config_to_machine(cfg, distributed=args.launcher != 'none', amp=args.amp):
        if is_main_process():
            print(line, flush=True)
    return cfg


def build_runner(cfg):
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    init_distributed_on_cpu(cfg)
    try:
        build_runner(cfg).train()
    except (CheckpointError, UnsupportedModelError) as error:  # e.g. the ImageNet file is not there: what to do
        sys.exit(f'error: {error}')
    except FileNotFoundError as error:  # most often the data set is not where the config says
        sys.exit(f'error: {error}. {CHECK_HINT}')
    except RuntimeError as error:  # another process of the run died or froze: say so, and how to go on
        if not lost_a_peer(error):
            raise
        sys.exit(f'error: lost contact with another process of this distributed run ({error}). Its own log says '
                 f'why it stopped. To continue from the last complete checkpoint in {cfg.work_dir} (if one was '
                 'saved), run the same command with --resume on every node.')


if __name__ == '__main__':
    main()
