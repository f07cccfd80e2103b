"""Loading ConvNeXt weights, top to bottom: every way weights reach a backbone ends in one strict check.

1. ``init_cfg=dict(type='Pretrained', checkpoint=...)`` (or ``pretrained=``): :func:`split_init_cfg` takes the
   entry out of mmengine's initializers (theirs would skip every key that does not match, with a warning), and
   the backbone's ``init_weights`` (:class:`StrictLoading`) calls :func:`load_pretrained`.
2. :func:`read_checkpoint`: a local ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file, a URL (torch hub's
   cache), ``hf-hub:REPO_ID`` (the Hugging Face hub's cache). mmengine's own loaders read ``.safetensors`` and
   ``hf-hub:`` through it too (:func:`register_loader_schemes`).
3. :func:`select_backbone`: the backbone's tensors inside any checkpoint (a whole detector's, a DDP model's, an
   FCMAE pre-training file made dense, a transformers classifier's).
4. ``model.load_state_dict`` -- or any other loader: mmengine's ``load_checkpoint``/``load_from``/resume,
   ``init_detector``, ``init_model``, the Inferencers, the hosts' tools -- reaches the backbone's
   ``_load_from_state_dict`` (:class:`StrictLoading`): :meth:`~StrictLoading.fit_weights` renames every public
   layout to the backbone's names (:func:`to_backbone_names`) and loads all of them or stops with a
   :class:`CheckpointError` that says what the weights are and what to write (:meth:`~StrictLoading.describe_misfit`).

Layouts, detected from the keys themselves:
- the official ConvNeXt / ConvNeXt V2 release: ``{'model': ...}``, ``downsample_layers.I.J.*``,
  ``stages.S.B.{dwconv,norm,pwconv1,pwconv2,gamma,grn.*}``, the classifier's ``norm.*`` and ``head.*``. These
  are convnext_mm's own names, so only the classifier is left out; the official isotropic models' ``stem``,
  ``blocks.N.*`` likewise;
- ConvNeXt V2 FCMAE pre-training files (``encoder.*`` in sparse-convolution layout);
- timm: ``stem.*``, ``stages.S.downsample.*``, ``stages.S.blocks.B.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``;
- mmpretrain: ``{'state_dict': ...}`` with ``backbone.``-prefixed keys, ``depthwise_conv``, ``pointwise_conv1/2``;
- transformers' ConvNextModel / ConvNextV2Model, their Backbone and classification classes, and DINOv3ConvNextModel
  / DINOv3ConvNextBackbone (``[model.]stages.S.downsample_layers.J``, ``[model.]stages.S.layers.B.{depthwise_conv,
  layer_norm,pointwise_conv1,pointwise_conv2,gamma}``, the final ``layer_norm``, left out as a classifier's);
- the original DINOv3 ConvNeXt release: the official names, its final norm also as ``norms.3`` (left out as the
  classifier's, as timm does); timm's ``convnext_*.dinov3_lvd1689m`` files are timm's layout;
- open_clip's CLIP ConvNeXt image towers: timm's names under ``visual.trunk.`` (found without ``prefix``; the
  projection head and the text tower are left out), as timm's ``convnext_*.clip_*`` files;
- files saved by convnext_mm (a bare backbone state dict, or a whole detector/segmentor checkpoint), including
  those of versions before 0.2, whose names were timm's (``stem``, ``stages.S.downsample``, ``stages.S.blocks.B``).
"""
import argparse
import json
import logging
import math
import os
import pickle
import re
import urllib.error
import urllib.parse
import warnings
import zipfile

import numpy as np
import torch
from mmengine.logging import MMLogger, print_log
from mmengine.model.weight_init import PretrainedInit
from mmengine.runner.checkpoint import CheckpointLoader

# What a checkpoint may hold beyond tensors, for torch's safe (weights_only) unpickler: numpy arrays and
# scalars (mmengine and mmpretrain store them in their metadata) and argparse.Namespace (training args).
# Allowed only while this module reads a file (:func:`_read_file`); the process's own list is left as it is.
SAFE_GLOBALS = [
    np.core.multiarray._reconstruct, np.core.multiarray.scalar, np.ndarray, np.dtype, argparse.Namespace,
    *{type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                  np.uint32, np.uint64, np.float16, np.float32, np.float64)},
]

# The one rename table: (pattern, replacement) applied in order to each key of a backbone (its prefix removed), mapping
# every public layout onto the official names, which are convnext_mm's own: downsample_layers.I.J,
# stages.S.B.{dwconv,norm,pwconv1,pwconv2,gamma,grn}, norm0..3.
KEY_RENAMES = [
    # timm's module names, which convnext_mm 0.1 used too.
    (r'^stem\.', 'downsample_layers.0.'),
    (r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.'),
    (r'^stages\.(\d+)\.blocks\.', r'stages.\1.'),
    # transformers' ConvNextModel / ConvNextV2Model (and their Backbone classes).
    (r'^embeddings\.patch_embeddings\.', 'downsample_layers.0.0.'),
    (r'^embeddings\.layernorm\.', 'downsample_layers.0.1.'),
    (r'^encoder\.stages\.(\d+)\.downsampling_layer\.', r'downsample_layers.\1.'),
    (r'^encoder\.stages\.(\d+)\.layers\.', r'stages.\1.'),
    (r'^hidden_states_norms\.stage(\d)\.', lambda m: f'norm{int(m.group(1)) - 1}.'),
    (r'^layernorm\.', 'norm.'),  # the classifier's final norm
    (r'^(stages\.\d+\.\d+)\.layernorm\.', r'\1.norm.'),
    # transformers' DINOv3ConvNextModel / DINOv3ConvNextBackbone: stage S holds its downsample layer; the module's
    # state dict has its encoder under model., the files save_pretrained writes do not.
    (r'^(?:model\.)?stages\.(\d+)\.downsample_layers\.', r'downsample_layers.\1.'),
    (r'^(?:model\.)?stages\.(\d+)\.layers\.', r'stages.\1.'),
    (r'^(stages\.\d+\.\d+)\.layer_norm\.', r'\1.norm.'),
    (r'^layer_norm\.', 'norm.'),  # DINOv3's final norm (of the pooled and patch tokens in pre-training)
    (r'\.layer_scale_parameter$', '.gamma'),
    (r'\.grn\.weight$', '.grn.gamma'),  # transformers' and timm's ConvNeXt V2
    (r'\.grn\.bias$', '.grn.beta'),
    # mmpretrain, timm.
    (r'\.(depthwise_conv|conv_dw)\.', '.dwconv.'),
    (r'\.(pointwise_conv1|mlp\.fc1)\.', '.pwconv1.'),
    (r'\.(pointwise_conv2|mlp\.fc2)\.', '.pwconv2.'),
    (r'\.mlp\.grn\.', '.grn.'),
]
# What wraps a whole model's keys: DDP's module., transformers' classification models' convnext. / convnextv2.
WRAPPER_PREFIX = re.compile(r'^(module|convnext|convnextv2)\.')
# The image classifier of a classification checkpoint: official final norm and head, timm's head, transformers';
# the original DINOv3 files' final norm again as norms.3 and EUPE's distillation projectors (timm drops them too).
CLASSIFIER_KEY = re.compile(r'^(norm|head|norm_pre|classifier|norms\.\d+|projectors)\.')
OUTPUT_NORM_KEY = re.compile(r'^norm\d+\.')  # one per output: norm0..3, or a block's index (isotropic)
BACKBONE_KEY = re.compile(r'^(downsample_layers|stages|norm\d+)\.')
# open_clip's CLIP models: the ConvNeXt image tower (timm's names) under this prefix, beside its projection head
# (visual.head.*) and the text tower.
OPEN_CLIP_TRUNK = 'visual.trunk.'
# transformers' ConvNeXt model types whose config.json's layer_norm_eps is the epsilon of every LayerNorm of the
# backbone. (ConvNextModel and ConvNextV2Model use it only in the classifier's final norm, 1e-12 by default; their
# backbone's norms are fixed at 1e-6.)
TRANSFORMERS_MODEL_TYPES = ('dinov3_convnext', )
# ConvNeXt V2's FCMAE pre-training files: the encoder in MinkowskiEngine's sparse layout.
FCMAE_KEY = re.compile(r'^encoder\..*\.(kernel|ln\.weight|linear\.weight)$')
MAX_KEYS_SHOWN = 6
HF_HUB_PREFIX = 'hf-hub:'
# What a Hugging Face model repository holds its weights in, in the order looked for.
HF_HUB_FILES = ('model.safetensors', 'pytorch_model.bin')
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location')


class CheckpointError(RuntimeError):
    """Weights that cannot be loaded into a ConvNeXt backbone; the message says why and what to do."""


# ---------------------------------------------------------------- 1. init_cfg
def split_init_cfg(owner, init_cfg, pretrained=None):
    """``(pretrained_cfg, init_cfg)`` from mmengine's ``init_cfg`` (a dict or a list of dicts) and the old-style
    ``pretrained=PATH`` argument of the backbone ``owner`` (its class name, for messages): the one ``Pretrained``
    entry, which :func:`load_pretrained` loads (checking every key), and ``init_cfg`` with the ``Pretrained`` entry
    removed (for mmengine's initializers: theirs would load the file with ``strict=False``, skipping every key that
    does not match with only a warning)."""
    entries = [] if init_cfg is None else [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
    if not all(isinstance(entry, dict) and 'type' in entry for entry in entries):
        raise ValueError(f'{owner}: init_cfg must be a dict or a list of dicts with a type, got {init_cfg!r}')
    pretrained_cfgs = [entry for entry in entries if entry['type'] in ('Pretrained', PretrainedInit)]
    others = [entry for entry in entries if entry not in pretrained_cfgs]
    if pretrained is not None:
        if pretrained_cfgs:
            raise ValueError(f'{owner}: weights given twice, as pretrained={pretrained!r} and in init_cfg; '
                             "keep init_cfg=dict(type='Pretrained', checkpoint=...) only")
        warnings.warn(f'{owner}: pretrained= is deprecated, as in mmdet and mmseg; use '
                      "init_cfg=dict(type='Pretrained', checkpoint=...)", DeprecationWarning)
        pretrained_cfgs = [dict(type='Pretrained', checkpoint=pretrained)]
    if len(pretrained_cfgs) > 1:
        raise ValueError(f'{owner}: init_cfg has {len(pretrained_cfgs)} Pretrained entries; keep one')
    if not pretrained_cfgs:
        return None, init_cfg
    pretrained_cfg = pretrained_cfgs[0]
    unknown = sorted(set(pretrained_cfg) - set(PRETRAINED_KEYS))
    if unknown:
        raise ValueError(f'{owner}: init_cfg of type Pretrained has unsupported keys {unknown}; supported are '
                         f'{list(PRETRAINED_KEYS)}')
    if not pretrained_cfg.get('checkpoint'):
        raise ValueError(f"{owner}: init_cfg of type 'Pretrained' needs checkpoint=PATH_OR_URL")
    return pretrained_cfg, others or None


# ---------------------------------------------------------------- 2. reading a file
def read_checkpoint(path_or_url):
    """Load a checkpoint: a local ``.pth``/``.pt``/``.bin`` file (torch's safe unpickler: tensors, containers, numpy
    metadata) or ``.safetensors`` file, a URL, or ``hf-hub:REPO_ID`` (the Hugging Face hub, through its cache)."""
    source = os.fspath(path_or_url) if not isinstance(path_or_url, str) else path_or_url
    if source.startswith(HF_HUB_PREFIX):
        return _read_file(hf_hub_file(source))
    if re.match(r'^(https?|ftp)://', source):
        return _read_download(source)
    if not os.path.isfile(source):
        raise CheckpointError(
            f'ConvNeXt checkpoint {source!r} not found. Download the file (the official ImageNet weights are '
            'listed in the README) into that place, or point init_cfg.checkpoint at its local path, e.g. with '
            '--cfg-options model.backbone.init_cfg.checkpoint=PATH.')
    return _read_file(source)


def hf_hub_file(source):
    """The local path of a Hugging Face hub model's weights, ``hf-hub:REPO_ID`` as timm spells it (e.g.
    ``hf-hub:timm/convnext_tiny.fb_in1k``, ``hf-hub:facebook/convnext-tiny-224``): from huggingface_hub's cache
    if it is there, else downloaded into it (``model.safetensors``, else ``pytorch_model.bin``)."""
    repo_id = source[len(HF_HUB_PREFIX):]
    try:
        import huggingface_hub
    except ImportError as error:
        raise CheckpointError(f'{source}: reading from the Hugging Face hub needs huggingface_hub (pinned in '
                              'requirements.txt): pip install huggingface_hub') from error
    for filename in HF_HUB_FILES:
        cached = huggingface_hub.try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return cached
    problem = None
    for filename in HF_HUB_FILES:
        try:
            return huggingface_hub.hf_hub_download(repo_id, filename)
        except huggingface_hub.errors.RemoteEntryNotFoundError as error:  # the repo has the other file
            problem = error
        except Exception as error:  # offline, no such repository, no access: the message says which
            problem = error
            break
    cache = huggingface_hub.constants.HF_HUB_CACHE
    raise CheckpointError(
        f'{source}: {HF_HUB_FILES[0]} of {repo_id} is not in the Hugging Face cache ({cache}) and could not be '
        f'downloaded ({type(problem).__name__}: {problem}). On a machine with network, run `hf download {repo_id} '
        f'{HF_HUB_FILES[0]}` and copy {os.path.join(cache, "models--" + repo_id.replace("/", "--"))} into this '
        'cache (HF_HUB_CACHE moves it), or download the file and give its local path as the checkpoint.')


def _read_download(url):
    """A URL's checkpoint, downloaded into torch hub's cache (``$TORCH_HOME/hub/checkpoints``) as
    ``torch.hub.load_state_dict_from_url`` does, then read like a local file. A download that is no usable
    checkpoint (cut short, an HTML page, refused objects) is removed from the cache: kept, it would be read again
    on every later run instead of being downloaded anew."""
    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urllib.parse.urlparse(url).path))
    if not os.path.isfile(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, cached, progress=False)  # via a temporary file: never half-written
        except (urllib.error.URLError, OSError) as error:
            raise CheckpointError(
                f'Could not download the ConvNeXt checkpoint {url} ({error}). Offline, download the '
                'file elsewhere and pass its local path, e.g. '
                "init_cfg=dict(type='Pretrained', checkpoint='data/pretrained/FILE.pth').") from error
    try:
        return _read_file(cached)
    except CheckpointError as error:
        os.remove(cached)
        raise CheckpointError(f'The download of {url} is not a usable checkpoint (removed from the cache, so the '
                              f'next run downloads it again; check that the URL gives the .pth file itself): '
                              f'{error}') from error


def is_safetensors(path):
    """Whether the file is in the safetensors format (an 8-byte header length, then the JSON header), whatever
    its name. torch's files never hold '{' there: a zip archive's compression method, or the pickled magic
    number of the legacy format."""
    with open(path, 'rb') as f:
        start = f.read(9)
    return start[8:9] == b'{'


def _read_file(path):
    if is_safetensors(path):
        return _read_safetensors(path)
    # Only the types the process does not allow already: torch's context takes its own list away again on exit.
    allowed = set(torch.serialization.get_safe_globals())
    try:
        with torch.serialization.safe_globals([g for g in SAFE_GLOBALS if g not in allowed]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        if 'Unsupported global' not in str(error):  # not a refused object: the bytes are no pickle at all
            raise _corrupt(path, error) from error
        raise CheckpointError(
            f'{path} holds objects that safe loading (torch.load weights_only=True) refuses, so it is not a '
            f'plain checkpoint; re-save its state dict with torch.save. Details: {error}') from error
    # OSError: torch.load's error for some truncated zip archives (Errno 22); the file itself exists.
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise _corrupt(path, error) from error


def _read_safetensors(path):
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise CheckpointError(f'{path} is a safetensors file, and reading it needs the safetensors package (pinned '
                              'in requirements.txt): pip install safetensors') from error
    try:
        return load_file(path, device='cpu')
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for broken files
        raise _corrupt(path, error) from error


def _corrupt(path, error):
    return CheckpointError(f'{path} could not be read as a PyTorch or safetensors checkpoint; it may be truncated '
                           f'or corrupt: download or save it again. Details: {error}')


def load_from_safetensors(filename, map_location=None):
    """mmengine's checkpoint loader for ``.safetensors`` files and ``hf-hub:`` names (``load_from``, resume,
    ``load_checkpoint``, ``init_detector``, the Inferencers): read as :func:`read_checkpoint` reads them."""
    checkpoint = read_checkpoint(filename)
    if map_location not in (None, 'cpu'):
        checkpoint = {k: v.to(map_location) for k, v in checkpoint.items()}
    return checkpoint


def register_loader_schemes():
    """Add :func:`load_from_safetensors` to mmengine's checkpoint loaders for ``.safetensors`` paths and ``hf-hub:``
    names, each only where no loader has that prefix yet (a host's own loader stays). mmengine picks a loader by
    matching these patterns at the start of the path (longest first), so they come before its local loader and
    after its URL schemes."""
    for prefix in (r'(?!\w+://).*\.safetensors$', HF_HUB_PREFIX):
        try:
            CheckpointLoader.register_scheme(prefixes=prefix, loader=load_from_safetensors)
        except KeyError:  # registered already (by the host, or by an earlier import of this module)
            pass


register_loader_schemes()


# ---------------------------------------------------------------- 3. the backbone's part of a checkpoint
def unwrap_state_dict(checkpoint):
    """The tensor dict inside a checkpoint: under 'state_dict' (mmengine, mmpretrain), 'model' (official)."""
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def select_prefix(state_dict, prefix):
    """The tensors under ``prefix`` with it removed, as mmengine's ``Pretrained(prefix=...)`` does."""
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise CheckpointError(
            f"has no tensors under prefix={prefix!r} (its keys are like {_listing(list(state_dict)[:3])}). Delete "
            "prefix from init_cfg: convnext_mm finds the backbone in a whole model's checkpoint by itself")
    return selected


def fcmae_to_dense(state_dict):
    """The encoder of a ConvNeXt V2 FCMAE pre-training file (sparse convolutions) as a dense ConvNeXt V2 state dict,
    by the official release's ``remap_checkpoint_keys`` (ConvNeXt-V2 ``utils.py``): a kernel of shape
    (k*k, C) (depthwise) or (k*k, C_in, C_out) becomes a conv weight, ``.ln`` and ``.linear`` levels go, biases
    and GRN parameters stored as (1, C) become (C,). The decoder and mask token are returned as ignored."""
    dense, ignored = {}, []
    for key, value in state_dict.items():
        if not key.startswith('encoder.'):
            ignored.append(key)
            continue
        key = key[len('encoder.'):]
        if key.endswith('.kernel'):
            key = key[:-len('kernel')] + 'weight'
            size = math.isqrt(value.shape[0])
            if value.dim() == 3:
                _, in_dim, out_dim = value.shape
                value = value.permute(2, 1, 0).reshape(out_dim, in_dim, size, size).transpose(3, 2)
            else:
                value = value.permute(1, 0).reshape(value.shape[1], 1, size, size).transpose(3, 2)
        key = re.sub(r'\.(ln|linear)\.', '.', key)
        if key.endswith('.bias') or '.grn.' in key:
            value = value.reshape(-1)
        dense[key] = value.contiguous()
    return dense, ignored


def select_backbone(checkpoint, prefix=None):
    """The backbone's part of any supported checkpoint, its keys as the backbone names them in its own layout.

    ``prefix``: take only the tensors under it, as mmengine's ``Pretrained(prefix=...)``; without it, a whole
    model's checkpoint (keys under ``backbone.``) gives its backbone, a ConvNeXt V2 FCMAE file its encoder (made
    dense), a transformers classification file its ``convnext.`` model, an open_clip CLIP file its image tower
    (``visual.trunk.``). Returns ``(state_dict, ignored)``: the
    backbone's tensors, and the keys that belong to no backbone (a detector's neck and heads), as named in the file.
    """
    state_dict = unwrap_state_dict(checkpoint)
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError('not a state dict: expected a mapping of parameter names to tensors, '
                              "possibly under 'state_dict' or 'model'")
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}  # DDP wrapping
    ignored = []
    if prefix:
        state_dict = select_prefix(state_dict, prefix)
    elif any(k.startswith(OPEN_CLIP_TRUNK) for k in state_dict):
        ignored = [k for k in state_dict if not k.startswith(OPEN_CLIP_TRUNK)]
        state_dict = select_prefix(state_dict, OPEN_CLIP_TRUNK)
    elif any(FCMAE_KEY.match(k) for k in state_dict):
        state_dict, ignored = fcmae_to_dense(state_dict)
    else:
        state_dict = {WRAPPER_PREFIX.sub('', k): v for k, v in state_dict.items()}
    # A whole model (mmpretrain classifier, mmdet detector, mmseg segmentor): keep only its backbone.
    if any(k.startswith('backbone.') for k in state_dict):
        ignored += [k for k in state_dict if not k.startswith('backbone.')]
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    return state_dict, ignored


def load_pretrained(model, path_or_url, prefix=None, logger=None):
    """Load the backbone of a checkpoint of any supported layout into ``model`` (a :class:`StrictLoading` backbone):
    what ``init_cfg=dict(type='Pretrained', checkpoint=...)`` does. The model's own loading renames and checks every
    key and shape. ``prefix``: see :func:`select_backbone`."""
    name = str(path_or_url)
    try:
        given, ignored = select_backbone(read_checkpoint(path_or_url), prefix=prefix)
        check_norm_eps(model, recorded_norm_eps(name))
        model.load_state_dict(given, strict=False)
    except CheckpointError as error:
        if name in str(error):
            raise
        raise CheckpointError(f'{name}: {error}') from error
    if logger is not None:
        logger.info(f'{type(model).__name__}: loaded the backbone of {name}'
                    + (f'; left out {len(ignored)} tensors of no backbone: {_listing(ignored)}' if ignored else ''))


def recorded_norm_eps(source):
    """The LayerNorm epsilon that transformers' ``save_pretrained`` recorded beside the weights file ``source`` (a
    local path or ``hf-hub:`` name): ``layer_norm_eps`` of the ``config.json`` in its folder, where that is the
    config of a transformers model whose backbone norms use it (:data:`TRANSFORMERS_MODEL_TYPES`); else None."""
    path = hf_hub_file(source) if source.startswith(HF_HUB_PREFIX) else source
    config = os.path.join(os.path.dirname(os.path.abspath(path)), 'config.json')
    if not os.path.isfile(path) or not os.path.isfile(config):
        return None
    try:
        with open(config) as f:
            settings = json.load(f)
    except (OSError, ValueError):  # not a transformers config: nothing recorded
        return None
    if not isinstance(settings, dict) or settings.get('model_type') not in TRANSFORMERS_MODEL_TYPES:
        return None
    eps = settings.get('layer_norm_eps')
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        return None
    return float(eps)


def check_norm_eps(model, recorded):
    """A CheckpointError saying what to write where the weights record (``recorded``) another LayerNorm epsilon
    than ``model`` (a backbone with ``norm_eps``) uses: the same tensors would give other outputs."""
    own = getattr(model, 'norm_eps', None)
    if recorded is None or own is None or math.isclose(recorded, own, rel_tol=1e-6):
        return
    raise CheckpointError(f'the weights were trained with LayerNorm eps {recorded!r} (layer_norm_eps of the '
                          f'config.json beside them), the config builds norm_eps={own!r}. Write norm_eps={recorded!r} '
                          "in the config's model.backbone")


# ---------------------------------------------------------------- 4. names and architecture
def rename_key(key):
    """``key`` of a backbone tensor in any public layout -> its official name (an official key stays as it is)."""
    for pattern, replacement in KEY_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def to_backbone_names(state_dict):
    """A hierarchical backbone's tensors (keys without the backbone's prefix) in any public layout ->
    ``(converted, ignored)``: the tensors under the official names and shapes, and the keys of the image classifier
    (left out).

    Shapes: ConvNeXt V2's GRN parameters stored as (1, 1, 1, C) become (C,); 1x1-convolution pointwise weights
    (timm's ``conv_mlp``, mmpretrain's ``linear_pw_conv=False``) become Linear weights."""
    converted, ignored = {}, []
    for key, value in state_dict.items():
        new_key = rename_key(key)
        if CLASSIFIER_KEY.match(new_key):
            ignored.append(key)
            continue
        if new_key.endswith(('.grn.gamma', '.grn.beta')):
            value = value.reshape(-1)
        elif re.search(r'\.pwconv[12]\.weight$', new_key) and value.dim() == 4:
            value = value.flatten(1)
        converted[new_key] = value
    return converted, ignored


def isotropic_names(state_dict):
    """An isotropic backbone's tensors -> ``(converted, ignored)``: the official release's names are the
    backbone's own (``stem``, ``blocks.N``), so only the classifier (``norm``, ``head``) is left out."""
    ignored = [key for key in state_dict if CLASSIFIER_KEY.match(key)]
    return {k: v for k, v in state_dict.items() if k not in ignored}, ignored


def convert_state_dict(checkpoint, prefix=None):
    """The hierarchical ConvNeXt backbone of any supported checkpoint under convnext_mm's (the official) parameter
    names: :func:`select_backbone`, then :func:`to_backbone_names`. Returns ``(state_dict, ignored)``; ``ignored``
    also holds the image classifier's keys."""
    state_dict, ignored = select_backbone(checkpoint, prefix)
    converted, classifier = to_backbone_names(state_dict)
    return converted, ignored + classifier


def arch_of_state_dict(state_dict):
    """The ConvNeXt constructor arguments that fit a backbone state dict under the official names: ``arch``
    (depths and dims), ``use_grn`` and ``layer_scale_init_value`` (whether it has layer scale)."""
    depths, dims = [], []
    for stage in range(4):
        blocks = {int(m.group(1)) for key in state_dict for m in [re.match(rf'stages\.{stage}\.(\d+)\.', key)] if m}
        dwconv = state_dict.get(f'stages.{stage}.0.dwconv.weight')
        if not blocks or dwconv is None:
            raise CheckpointError(f'has no blocks for ConvNeXt stage {stage} (stages.{stage}.*), so it is no whole '
                                  f'ConvNeXt backbone (its keys are like {_listing(list(state_dict)[:3])})')
        depths.append(max(blocks) + 1)
        dims.append(dwconv.shape[0])
    has_layer_scale = any(re.match(r'stages\.\d+\.\d+\.gamma$', key) for key in state_dict)
    return dict(arch=dict(depths=depths, dims=dims), use_grn=any('.grn.' in key for key in state_dict),
                layer_scale_init_value=1e-6 if has_layer_scale else 0)


def isotropic_arch_of_state_dict(state_dict):
    """The ConvNeXtIsotropic constructor arguments that fit a backbone state dict under its names: ``arch``
    (depth and dim) and ``layer_scale_init_value`` (whether it has layer scale)."""
    if any(key.startswith(('downsample_layers.', 'stages.')) for key in state_dict):
        raise CheckpointError("is a hierarchical ConvNeXt's (write type='ConvNeXt')")
    blocks = {int(m.group(1)) for key in state_dict for m in [re.match(r'blocks\.(\d+)\.', key)] if m}
    stem = state_dict.get('stem.weight')
    if not blocks or stem is None:
        raise CheckpointError(f'has no stem and blocks of an isotropic ConvNeXt (its keys are like '
                              f'{_listing(list(state_dict)[:3])})')
    has_layer_scale = any(re.match(r'blocks\.\d+\.gamma$', key) for key in state_dict)
    return dict(arch=dict(depth=max(blocks) + 1, dim=stem.shape[0]),
                layer_scale_init_value=1e-6 if has_layer_scale else 0)


# ---------------------------------------------------------------- 5. the check every loader ends in
def compare_with_model(expected, given):
    """``given`` (name -> tensor, official names) against a model's ``expected`` state dict, by the backbone's
    all-or-nothing rule. Returns ``(missing, unexpected, reshaped, unused_norms)``: tensors of the model absent from
    ``given``, tensors of ``given`` the model lacks, tensors of another shape, and output norms of stages the model
    does not output (not an error: e.g. mmpretrain's norm3). An output norm absent from ``given`` as a whole is no
    error either (a classification file has none; the norm keeps its init)."""
    unused_norms = [k for k in given if OUTPUT_NORM_KEY.match(k) and k not in expected]
    unexpected = [k for k in given if k not in expected and k not in unused_norms]
    norms_given = {k.split('.')[0] for k in given if OUTPUT_NORM_KEY.match(k)}
    missing = [k for k in expected if k not in given and (
        not OUTPUT_NORM_KEY.match(k) or k.split('.')[0] in norms_given)]
    reshaped = [k for k, v in given.items() if k in expected and v.shape != expected[k].shape]
    return missing, unexpected, reshaped, unused_norms


class StrictLoading:
    """The loading of a backbone module (the first base of both ConvNeXt backbones, before mmengine's
    ``BaseModule``), from its ``init_cfg`` to the check that every loader ends in.

    Whatever loads the backbone (its ``init_cfg``, mmengine's load_checkpoint, load_from and resume, torch's
    load_state_dict, init_detector, init_model, the Inferencers, the host libraries' own tools) goes through
    ``_load_from_state_dict`` with the backbone's tensors under its prefix. They get the module's names from any
    public layout (``own_names``) and must fill every tensor of the module with its shape and hold none it lacks
    (the image classifier, and output norms absent as a whole, aside), or the load stops with
    :class:`CheckpointError` (:meth:`describe_misfit` says what the weights are and what to write). mmengine's own
    loaders would otherwise skip every key that does not match, leaving the backbone random with a warning.

    A subclass gives ``own_names(given) -> (converted, classifier_keys)`` and ``arch_of_weights(converted) ->
    constructor arguments`` (static: :func:`to_backbone_names` and :func:`arch_of_state_dict`, or the isotropic
    ones), ``arch_settings`` (its presets), ``arch_args()`` (its own arguments as ``arch_of_weights`` gives them)
    and ``arch_name(args=None)`` (a name for those arguments, or its own)."""

    def __init__(self, init_cfg=None, pretrained=None, default_init_cfg=None):
        self.pretrained_cfg, init_cfg = split_init_cfg(type(self).__name__, init_cfg, pretrained)
        if init_cfg is None and self.pretrained_cfg is None:
            init_cfg = default_init_cfg
        super().__init__(init_cfg=init_cfg)

    def init_weights(self):
        # mmengine's order: the other initializers, then the file; the file through load_pretrained, which checks
        # every key, where mmengine's PretrainedInit would skip mismatched keys with a warning.
        super().init_weights()
        if self.pretrained_cfg is not None:
            load_pretrained(self, self.pretrained_cfg['checkpoint'], prefix=self.pretrained_cfg.get('prefix'),
                            logger=MMLogger.get_current_instance())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not self.fit_prefixed(state_dict, prefix):
            print_log(f'{type(self).__name__}: the weights being loaded hold no tensor under {prefix!r}: the '
                      f'backbone ({self.arch_name()}) keeps the weights it has (its initialization, or init_cfg\'s '
                      'file)', logger='current', level=logging.WARNING)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fit_prefixed(self, state_dict, prefix):
        """In place: the tensors of ``state_dict`` under ``prefix`` replaced by :meth:`fit_weights` of them (this
        module's names, checked). Returns whether there were any."""
        keys = [key for key in state_dict if key.startswith(prefix)]
        if keys:
            given = {key[len(prefix):]: state_dict.pop(key) for key in keys}
            state_dict.update({prefix + key: value for key, value in self.fit_weights(given, prefix).items()})
        return bool(keys)

    def fit_weights(self, given, prefix=''):
        """The backbone tensors ``given`` (any public layout, keys without ``prefix``) under this module's names,
        checked as the class doc says; logs what was renamed, left out or kept at its init."""
        converted, classifier = self.own_names(given)
        expected = self.state_dict()
        where = f'the weights under {prefix!r}' if prefix else 'the weights'
        if not any(key in expected for key in converted):
            raise CheckpointError(f'{where} hold no tensor of a {type(self).__name__} backbone ({self.arch_name()}; '
                                  f'they have {_listing(given)})')
        missing, unexpected, reshaped, unused_norms = compare_with_model(expected, converted)
        if missing or unexpected or reshaped:
            raise CheckpointError(f'{where} do not fit this {type(self).__name__} backbone: '
                                  + self.describe_misfit(converted, missing, unexpected, reshaped))
        renamed = len([key for key in given if key not in converted and key not in classifier])
        absent_norms = sorted({key.split('.')[0] for key in expected if key not in converted},
                              key=lambda name: int(name[len('norm'):]))
        notes = [f'{renamed} renamed from another layout' if renamed else '',
                 f'left out the classifier ({len(classifier)} tensors)' if classifier else '',
                 f'left out {", ".join(sorted({k.split(".")[0] for k in unused_norms}))}, which this backbone does '
                 'not output' if unused_norms else '',
                 f'{", ".join(absent_norms)} not in the weights: kept at their init' if absent_norms else '']
        if any(notes):
            print_log(f'{type(self).__name__}: loaded {len(converted) - len(unused_norms)} tensors from {where}: '
                      + '; '.join(note for note in notes if note), logger='current', level=logging.INFO)
        return {key: value for key, value in converted.items() if key in expected}

    def describe_misfit(self, converted, missing, unexpected, reshaped):
        """What the weights are against what the config builds, the arguments to write, and the keys that differ."""
        expected = self.state_dict()
        problems = '; '.join(f'{label}: {_listing(keys)}' for label, keys in (
            ('shape mismatch', [f'{k} {tuple(converted[k].shape)} in the weights vs {tuple(expected[k].shape)} here'
                                for k in reshaped]),
            ('missing from the weights', missing), ('not in this backbone', unexpected)) if keys)
        try:
            found = self.arch_of_weights(converted)
        except CheckpointError as error:
            return f'they are no whole {type(self).__name__} backbone: the checkpoint {error}. {problems}'
        own = self.arch_args()
        write = [self._argument(name, found[name]) for name in own if found[name] != own[name]]
        advice = (f"Write {', '.join(write)} in the config's model.backbone, or give weights of the backbone it "
                  'builds' if write else 'Give weights of the backbone the config builds')
        return f'they are {self.arch_name(found)}, the config builds {self.arch_name()}. {advice}. {problems}'

    def _argument(self, name, value):
        """``name=value`` as a config writes it: a preset's name for a preset's ``arch``."""
        if name == 'arch':
            preset = next((key for key, setting in self.arch_settings.items() if setting == value), None)
            if preset:
                return f"arch='{preset}'"
            return 'arch=dict(' + ', '.join(f'{key}={setting}' for key, setting in value.items()) + ')'
        return f'{name}={value!r}'


def _listing(keys, shown=MAX_KEYS_SHOWN):
    keys = sorted(keys)
    more = f' ... and {len(keys) - shown} more' if len(keys) > shown else ''
    return ', '.join(keys[:shown]) + more
