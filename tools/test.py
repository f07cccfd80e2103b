"""Test (and evaluate) a ConvNeXt detector or segmentor: mmdet's and mmseg's tools/test.py, also without a GPU.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out PATH] [--show-dir DIR] [--tta] [--amp]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

A config gives the same figures here as under mmdet's or mmseg's own tools/test.py. What this tool adds:
distributed runs on CPUs (the ``--cfg-options`` they need are printed, tools/config_utils.py),
``--cfg-options data_root=PATH``, ``--amp``. A checkpoint of the demo is tested with its demo config:
``python tools/test.py configs/demo/cascade_convnext_t_demo.py CHECKPOINT``. Several GPUs: tools/dist_test.sh.
``--tta`` runs the config's test-time augmentation (the segmentation configs' multi-scale 0.5-1.75 plus flip test).
``--out``: detection, a .pkl file of the raw predictions (as mmdet); segmentation, a directory of predicted label
maps (as mmseg).

``--amp``: mixed-precision inference, bfloat16 on the CPU and float16 on a CUDA GPU. It sets the config's
``test_cfg.fp16=True`` (mmengine's TestLoop switch, and what mmpretrain's ``tools/test.py --amp`` sets; with mmdet's
own tools/test.py: ``--cfg-options test_cfg.fp16=True``). The configs' AutocastNetworkHook then runs mmengine's
autocast over the network's layers (backbone, neck, heads) only, box decoding, NMS, RoIAlign, mask pasting and
resizing in float32 (convnext_mm/mixed_precision.py; mmcv's CPU NMS and RoIAlign take float32 only); a config
without the hook is refused, with the line to add. On this project's 2-core CPU it keeps the demo's metrics and
runs Cascade Mask R-CNN ConvNeXt-T 1.6x and UperNet ConvNeXt-T 1.9x as fast at the paper's input sizes
(docs/benchmarks.md).
"""
import argparse
import os
import os.path as osp
import re

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from config_utils import config_from_command_line, fit_config_to_machine, init_distributed_on_cpu, is_main_process
from convnext_mm.checkpoint import CheckpointError
from convnext_mm.mixed_precision import UnsupportedModelError
from dataset_checks import CHECK_HINT, leaf_datasets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a ConvNeXt detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the file containing evaluation metrics')
    parser.add_argument(
        '--out',
        help='detection: dump predictions to this .pkl file; segmentation: save predicted label maps in this dir')
    parser.add_argument(
        '--show-dir', help='save painted predictions in this dir (under work_dir/TIMESTAMP/ for detection; for '
        'segmentation, of every default_hooks.visualization.interval-th image, as mmseg: set it to 1 for all)')
    parser.add_argument('--tta', action='store_true', help="test with the config's test-time augmentation")
    parser.add_argument(
        '--amp', action='store_true', help='mixed-precision inference (test_cfg.fp16=True): the network\'s layers '
        'in bfloat16 on the CPU, float16 on CUDA; post-processing in float32')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs (e.g. data_root=PATH); a list value is '
        'key="[a,b]" or key=a,b, quotation marks needed, no white space')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if not re.match(r'^(https?|s3)://', args.checkpoint) and not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint {args.checkpoint!r} is not a file')
    return args


def build_config(args):
    cfg = config_from_command_line(args)
    cfg.load_from = args.checkpoint

    if args.show_dir:
        draw_predictions(cfg, args.show_dir)
    if args.tta:
        use_test_time_augmentation(cfg, args.config)
    if args.amp:
        if not any(hook.get('type') == 'AutocastNetworkHook' for hook in cfg.get('custom_hooks', [])):
            raise SystemExit(f"error: --amp: {args.config} lists no AutocastNetworkHook, without which mmengine's "
                             'autocast would also run NMS and RoIAlign, which take float32 only: add '
                             "dict(type='AutocastNetworkHook') to the config's custom_hooks")
        cfg.test_cfg['fp16'] = True
    if args.out is not None and cfg.default_scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True

    # Without CUDA: the --cfg-options that run the config here (a distributed run's), applied and printed.
    for line in fit_config_to_machine(cfg, distributed=args.launcher != 'none', training=False):
        if is_main_process():
            print(line, flush=True)
    return cfg


def draw_predictions(cfg, show_dir):
    """Turn on the visualization hook; mmdet's hook and mmseg's visualizer each take the directory their way."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit("error: --show-dir needs default_hooks.visualization in the config, "
                         "e.g. dict(type='DetVisualizationHook')")
    hook['draw'] = True
    if cfg.default_scope == 'mmdet':
        hook['test_out_dir'] = show_dir
    else:
        cfg.visualizer['save_dir'] = show_dir


def use_test_time_augmentation(cfg, config_path):
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise SystemExit(f'error: --tta: {config_path} defines no tta_model and tta_pipeline (the paper tests '
                         'segmentation with test-time augmentation, detection without); add both to the config')
    for dataset in leaf_datasets(cfg.test_dataloader.dataset):  # a wrapper (ConcatDataset, ...) takes no pipeline
        dataset['pipeline'] = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    if args.out is not None and cfg.default_scope == 'mmdet' and not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit(f'error: --out {args.out}: detection predictions are dumped to a .pkl file')
    init_distributed_on_cpu(cfg)
    try:
        runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
        if args.out is not None and cfg.default_scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        return runner.test()
    # A checkpoint of another backbone; --amp on a model it cannot split: each message says what to write.
    except (CheckpointError, UnsupportedModelError) as error:
        raise SystemExit(f'error: {error}') from None
    except FileNotFoundError as error:  # most often the data set is not where the config says
        raise SystemExit(f'error: {error}. {CHECK_HINT}') from None


if __name__ == '__main__':
    main()
