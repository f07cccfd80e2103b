"""What this repository's tools/train.py and tools/test.py add to mmdet's and mmseg's: reading the command line,
and running the paper's configs on a machine without CUDA.

The configs state the paper's set-up: fp16 AMP, SyncBN heads, NCCL; everything else a run does is in the config
(hooks included), so mmdet's and mmseg's own tools run them alike. Without CUDA, the tools here adapt a loaded
config (``fit_config_to_machine``) and log each change:

- ``AmpOptimWrapper`` -> ``OptimWrapper`` (fp32): mmengine's AmpOptimWrapper refuses to build without a GPU.
  With mmdet's or mmseg's own tools: ``--cfg-options optim_wrapper.type=OptimWrapper``, the same config.
- Distributed runs start torch's CPU backend, gloo (``init_distributed_on_cpu``), with the config's
  ``env_cfg.dist_cfg.timeout``: mmengine's ``init_dist`` calls ``torch.cuda.set_device``, which a CPU build
  of torch lacks (so mmdet's own tools cannot run a distributed job on a CPU).
- Distributed runs turn SyncBN into BN: torch's SyncBatchNorm synchronizes GPU tensors only, so on the CPU each
  process normalizes over its own images. A single process needs nothing: mmengine's Runner reverts SyncBN to BN
  when it is not distributed, and torch's SyncBatchNorm without a process group acts as BN.
- DDP wraps the model without ``device_ids``, which DDP rejects for a module on the CPU.

``--demo`` runs a paper config's demo config (configs/demo/, :func:`convnext_mm.demo.demo_config_file`).
"""
import datetime
import importlib
import importlib.util
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope

from .demo import demo_config_file

# (height, width) of the paper's detection FLOPs.
DETECTION_FLOPS_SIZE = (800, 1280)
AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')
HOST_LIBRARIES = ('mmdet', 'mmseg')


def apply_cfg_options(cfg, options):
    """Merge ``--cfg-options`` into ``cfg``; ``data_root=PATH`` also moves every path built from the data root.

    A config's dataloaders and evaluators copy ``data_root`` when the file is read, so overriding the
    top-level variable alone would change nothing; here it re-roots all of them.
    """
    options = dict(options or {})
    if 'data_root' in options:
        reroot_data(cfg, options.pop('data_root'))
    if options:
        cfg.merge_from_dict(options)


def reroot_data(cfg, new_root):
    """Replace the config's ``data_root`` by ``new_root`` in ``data_root`` and in every path that starts with it."""
    old_root = cfg.get('data_root')
    if not isinstance(old_root, str) or not old_root:
        raise ValueError(f'data_root={new_root!r} given, but this config has no top-level data_root to replace; '
                         'set the dataset paths themselves, e.g. train_dataloader.dataset.data_root=PATH')
    new_root = str(new_root)
    if old_root.endswith('/') and not new_root.endswith('/'):
        new_root += '/'  # configs build paths as data_root + 'annotations/...'
    old_dir = old_root.rstrip('/')

    def reroot(value):
        if isinstance(value, str):
            if value.rstrip('/') == old_dir:
                return new_root
            if value.startswith(old_dir + '/'):
                return osp.join(new_root, value[len(old_dir) + 1:])
            return value
        if isinstance(value, dict):
            for key in list(value.keys()):
                value[key] = reroot(value[key])
            return value
        if isinstance(value, list):
            value[:] = [reroot(item) for item in value]
            return value
        if isinstance(value, tuple):
            return type(value)(reroot(item) for item in value)
        return value

    for key in list(cfg.keys()):
        cfg[key] = reroot(cfg[key])


def task_scope(cfg):
    """'mmdet' or 'mmseg' for ``cfg``: its ``default_scope``, else the host library whose registry has its model."""
    scope = cfg.get('default_scope')
    if scope:
        return scope
    model_type = cfg.get('model', {}).get('type')
    for library in HOST_LIBRARIES:
        if importlib.util.find_spec(library) is None:
            continue
        registries = importlib.import_module(f'{library}.registry')
        if isinstance(model_type, str) and registries.MODELS.get(model_type) is not None:
            return library
    raise ValueError(f'cannot tell which library runs model type {model_type!r}: set default_scope in the config '
                     f"('mmdet' or 'mmseg')")


def load_config(path, cfg_options=None):
    """A config file with ``--cfg-options`` applied and its ``default_scope`` set ('mmdet' or 'mmseg')."""
    cfg = Config.fromfile(path)
    apply_cfg_options(cfg, cfg_options)
    cfg.default_scope = task_scope(cfg)
    return cfg


def config_from_command_line(args):
    """The config of ``tools/train.py`` or ``tools/test.py``, with what their command lines share applied, as
    mmdet's tools do it: ``--demo`` (the paper config's demo config file instead), ``--cfg-options``,
    ``--launcher`` and ``--work-dir`` (command line > config > ./work_dirs/<config file name>)."""
    config = args.config
    if getattr(args, 'demo', False):
        try:
            config = demo_config_file(config)
        except ValueError as error:
            raise SystemExit(f'error: {error}') from None
        if osp.realpath(config) != osp.realpath(args.config):
            print(f'--demo: running {osp.relpath(config)}, the demo config of {args.config} (mmdet\'s and mmseg\'s '
                  'own tools run that file as it is)', flush=True)
    cfg = load_config(config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def build_model(cfg):
    """The config's model outside a Runner: eval mode, random weights (no pre-trained file read), SyncBN as BN."""
    init_default_scope(cfg.default_scope)
    return revert_sync_batchnorm(MODELS.build(cfg.model)).eval()


def paper_input_size(cfg):
    """(height, width) at which the paper gives a model's FLOPs: 1280x800 for detection; for segmentation the
    config's test resize, 2048x512 with 512 crops and 2560x640 with 640 crops."""
    if cfg.default_scope == 'mmdet':
        return DETECTION_FLOPS_SIZE
    for transform in cfg.test_dataloader.dataset.pipeline:
        if transform.get('type') == 'Resize' and transform.get('scale'):
            width, height = transform['scale']
            return (height, width)
    raise ValueError('the test pipeline of this config has no Resize with a scale; give the input size')


def cuda_available():
    return torch.cuda.is_available()


def init_distributed_on_cpu(cfg):
    """Without CUDA, start the process group of ``cfg.launcher`` with gloo (torchrun's environment) before
    mmengine's Runner would.

    The config's ``env_cfg.dist_cfg.timeout`` (seconds, which mmengine's ``init_dist`` would apply) bounds how long
    a process waits in a collective for a peer that neither answers nor closes its connection (a frozen process,
    a lost node); torch's default for gloo is 30 minutes. A peer that dies closes its connections, and the others
    fail at once whatever the timeout.
    """
    launcher = cfg.launcher
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
    if launcher == 'none' or cuda_available() or dist.is_initialized():
        return
    if launcher != 'pytorch':
        raise SystemExit(f'error: --launcher {launcher} needs CUDA GPUs; on a machine without them, run several '
                         'processes with torchrun: tools/dist_train.sh CONFIG NUM_PROCESSES (--launcher pytorch)')
    options = {} if timeout is None else dict(timeout=datetime.timedelta(seconds=timeout))
    dist.init_process_group(backend='gloo', **options)


def lost_a_peer(error):
    """Whether ``error`` is a distributed run's communication failing (a peer process died, froze or cannot be
    reached), not a fault of this process: torch raises DistError for NCCL and a RuntimeError naming gloo."""
    return dist.is_initialized() and (isinstance(error, dist.DistError) or 'gloo' in str(error))


def fit_config_to_machine(cfg, distributed):
    """Adapt ``cfg`` in place to a machine without CUDA (see the module doc); returns what changed, for the log."""
    if cuda_available():
        return []
    changes = []
    optim_wrapper = cfg.get('optim_wrapper')
    if optim_wrapper is not None and optim_wrapper.get('type') == 'AmpOptimWrapper':
        optim_wrapper['type'] = 'OptimWrapper'
        for key in AMP_ONLY_KEYS:
            optim_wrapper.pop(key, None)
        changes.append('no CUDA GPU: training in fp32, optim_wrapper.type=OptimWrapper instead of the config\'s fp16 '
                       'AmpOptimWrapper, which needs a GPU (mmdet\'s and mmseg\'s own tools/train.py: add '
                       '--cfg-options optim_wrapper.type=OptimWrapper)')
    if distributed:
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        if replace_sync_bn(cfg.get('model')):
            changes.append('no CUDA GPU: SyncBN -> BN (torch synchronizes batch norms of GPU tensors only; '
                           'each process normalizes over its own images)')
        wrapper = cfg.get('model_wrapper_cfg') or dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
        wrapper['device_ids'] = None  # DDP takes no device ids for a module on the CPU
        cfg['model_wrapper_cfg'] = wrapper
    return changes


def replace_sync_bn(model_cfg):
    """Turn every SyncBN norm_cfg in a model config into BN, in place; returns how many were replaced."""
    count = 0
    if isinstance(model_cfg, dict):
        if model_cfg.get('type') in SYNC_BN_TYPES:
            model_cfg['type'] = 'BN'
            count += 1
        for value in model_cfg.values():
            count += replace_sync_bn(value)
    elif isinstance(model_cfg, (list, tuple)):
        for value in model_cfg:
            count += replace_sync_bn(value)
    return count
