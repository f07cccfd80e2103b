"""What this repository's tools add to mmdet's and mmseg's when they read a config: the command line, and the
``--cfg-options`` that run a paper config on a machine without CUDA.

The configs state the paper's set-up: fp16 AMP, SyncBN heads, NCCL; everything else a run does is in the config
(hooks included), so mmdet's and mmseg's own tools run them alike. Without CUDA, ``tools/train.py`` and
``tools/test.py`` apply :func:`machine_options` and print them as the ``--cfg-options`` they are, so the same
options run the config the same way under the hosts' tools:

- ``optim_wrapper.type=OptimWrapper`` (training in fp32): mmengine's AmpOptimWrapper refuses to build without a
  GPU. ``tools/train.py --amp`` on a CPU gives ``optim_wrapper.type=CPUAmpOptimWrapper`` (bfloat16) instead.
- Distributed runs: ``env_cfg.dist_cfg.backend=gloo``, torch's CPU backend; each SyncBN ``norm_cfg.type=BN``
  (torch's SyncBatchNorm synchronizes GPU tensors only, so on the CPU each process normalizes over its own
  images; a single process needs nothing, as mmengine's Runner reverts SyncBN to BN there); and
  ``model_wrapper_cfg.device_ids=None``, as DDP takes no device ids for a module on the CPU. The process group
  itself is started here (:func:`init_distributed_on_cpu`): mmengine's ``init_dist`` calls
  ``torch.cuda.set_device``, which a CPU build of torch lacks, so the hosts' tools cannot run these.

``--cfg-options data_root=PATH`` also moves every dataset path built from the config's data root
(:func:`reroot_data`).
"""
import argparse
import datetime
import importlib
import importlib.util
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope

# (height, width) of the paper's detection FLOPs.
DETECTION_FLOPS_SIZE = (800, 1280)
# AmpOptimWrapper's keys, which OptimWrapper does not take.
AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')
HOST_LIBRARIES = ('mmdet', 'mmseg')
# Constructors that read decay_rate / decay_type / num_layers: this project's and mmdet's and mmseg's own.
DECAY_CONSTRUCTORS = ('ConvNeXtLayerDecayOptimizerConstructor', 'LearningRateDecayOptimizerConstructor')
DECAY_KEYS = ('decay_rate', 'decay_type', 'num_layers')


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
    mmdet's tools do it: ``--cfg-options``, ``--launcher`` and ``--work-dir`` (command line > config >
    ./work_dirs/<config file name>)."""
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
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


def check_decay_constructor(optim_wrapper_cfg):
    """Refuse decay settings that no constructor would read: mmengine's default constructor ignores them
    silently, and every layer would train at the full learning rate."""
    paramwise_cfg = optim_wrapper_cfg.get('paramwise_cfg') or {}
    constructor = optim_wrapper_cfg.get('constructor', 'DefaultOptimWrapperConstructor')
    decay_keys = [key for key in DECAY_KEYS if key in paramwise_cfg]
    if decay_keys and constructor not in DECAY_CONSTRUCTORS:
        raise ValueError(f'optim_wrapper.paramwise_cfg sets {decay_keys}, which {constructor} ignores: no layer '
                         "would have a decayed learning rate. Add constructor='ConvNeXtLayerDecayOptimizerConstructor' "
                         'to optim_wrapper (or remove those keys)')


def cuda_available():
    return torch.cuda.is_available()


def machine_options(cfg, distributed, training=True, amp=False):
    """The ``--cfg-options`` (``'key=value'`` strings, in mmengine's DictAction syntax) that run ``cfg`` on this
    machine: none with CUDA; without it, those of the module doc. ``training``: the optimizer wrapper matters
    (tools/train.py); ``amp``: bfloat16 training (tools/train.py --amp)."""
    if cuda_available():
        return []
    options = []
    optim_type = (cfg.get('optim_wrapper') or {}).get('type')
    if training and amp:
        options.append('optim_wrapper.type=CPUAmpOptimWrapper')
    elif training and optim_type == 'AmpOptimWrapper':
        options.append('optim_wrapper.type=OptimWrapper')
    if distributed:
        options.append('env_cfg.dist_cfg.backend=gloo')
        options += [f'{key}=BN' for key in sync_bn_keys(cfg.get('model'), 'model')]
        if not cfg.get('model_wrapper_cfg'):  # the wrapper mmengine's Runner would build, given explicitly
            options += ['model_wrapper_cfg.type=MMDistributedDataParallel',
                        'model_wrapper_cfg.broadcast_buffers=False',
                        f"model_wrapper_cfg.find_unused_parameters={cfg.get('find_unused_parameters', False)}"]
        options.append('model_wrapper_cfg.device_ids=None')
    return options


def parse_cfg_options(options):
    """``{key: value}`` of ``'key=value'`` strings, as ``--cfg-options`` (mmengine's DictAction) parses them."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


def fit_config_to_machine(cfg, distributed, training=True, amp=False):
    """Apply :func:`machine_options` to ``cfg`` in place, exactly as ``--cfg-options`` would; returns the lines
    that say what was applied and why (none with CUDA), for the tool to print."""
    options = machine_options(cfg, distributed, training, amp)
    if not options:
        return []
    cfg.merge_from_dict(parse_cfg_options(options))
    lines = [f'No CUDA GPU: running {osp.basename(cfg.filename or "the config")} with --cfg-options '
             + ' '.join(options)]
    if 'optim_wrapper.type=OptimWrapper' in options:
        optim_wrapper = cfg.optim_wrapper
        dropped = [key for key in AMP_ONLY_KEYS if optim_wrapper.pop(key, None) is not None]
        lines.append("  training in fp32: mmengine's AmpOptimWrapper needs a GPU"
                     + (f'; also left out optim_wrapper.{", ".join(dropped)}, which OptimWrapper does not take '
                        "(remove them from the config for the hosts' tools)" if dropped else ''))
    if 'optim_wrapper.type=CPUAmpOptimWrapper' in options:
        lines.append('  --amp: bfloat16 mixed-precision training on the CPU')
    if distributed:
        lines.append('  distributed on CPUs: gloo; SyncBN -> BN (torch synchronizes batch norms of GPU tensors '
                     'only, so each process normalizes over its own images); DDP without device ids')
    lines.append("  mmdet's and mmseg's own tools/train.py and tools/test.py run the config the same way with "
                 'these options' + (', but start no distributed run without CUDA' if distributed else ''))
    return lines


def sync_bn_keys(model_cfg, path):
    """The dotted keys (list items by index, as ``--cfg-options`` takes them) of every SyncBN ``type`` in a
    model config."""
    keys = []
    if isinstance(model_cfg, dict):
        if model_cfg.get('type') in SYNC_BN_TYPES:
            keys.append(f'{path}.type')
        for name, value in model_cfg.items():
            keys += sync_bn_keys(value, f'{path}.{name}')
    elif isinstance(model_cfg, (list, tuple)):
        for index, value in enumerate(model_cfg):
            keys += sync_bn_keys(value, f'{path}.{index}')
    return keys


def is_main_process():
    """Rank 0 of a run started by torchrun (or any process outside one), before the process group exists."""
    return os.environ.get('RANK', '0') == '0'


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
