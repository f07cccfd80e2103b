"""Reading ConvNeXt checkpoints in the public layouts and loading them into :class:`ConvNeXt`.

Supported, detected from the file itself:
- the official ConvNeXt / ConvNeXt V2 release: ``{'model': ...}``, ``downsample_layers.I.J.*``,
  ``stages.S.B.{dwconv,norm,pwconv1,pwconv2,gamma,grn.*}``, the classifier's ``norm.*`` and ``head.*``. These
  are convnext_mm's own names, so only the classifier is left out;
- ConvNeXt V2 FCMAE pre-training files (``encoder.*`` in sparse-convolution layout);
- timm: ``stem.*``, ``stages.S.downsample.*``, ``stages.S.blocks.B.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``;
- mmpretrain: ``{'state_dict': ...}`` with ``backbone.``-prefixed keys, ``depthwise_conv``, ``pointwise_conv1/2``;
- files saved by convnext_mm (a bare backbone state dict, or a whole detector/segmentor checkpoint), including
  those of versions before 0.2, whose names were timm's (``stem``, ``stages.S.downsample``, ``stages.S.blocks.B``).
"""
import argparse
import math
import os
import pickle
import re
import urllib.error
import urllib.parse
import zipfile

import numpy as np
import torch

# What a checkpoint may hold beyond tensors, for torch's safe (weights_only) unpickler: numpy arrays and
# scalars (mmengine and mmpretrain store them in their metadata) and argparse.Namespace (training args).
SAFE_GLOBALS = [
    np.core.multiarray._reconstruct, np.core.multiarray.scalar, np.ndarray, np.dtype, argparse.Namespace,
    *{type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                  np.uint32, np.uint64, np.float16, np.float32, np.float64)},
]
# Registered once, for the whole process: torch's scoped `safe_globals` context removes its types again on
# exit, which would also take them from every other loader (mmengine's resume) that relies on them.
torch.serialization.add_safe_globals(SAFE_GLOBALS)

# (pattern, replacement) applied in order to each key, mapping every public layout onto the official names, which
# are convnext_mm's own: downsample_layers.I.J, stages.S.B.{dwconv,norm,pwconv1,pwconv2,gamma,grn}, norm0..3.
# timm's module names, which convnext_mm 0.1 used too.
TIMM_MODULE_RENAMES = [
    (r'^stem\.', 'downsample_layers.0.'),
    (r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.'),
    (r'^stages\.(\d+)\.blocks\.', r'stages.\1.'),
]
KEY_RENAMES = TIMM_MODULE_RENAMES + [
    (r'\.(depthwise_conv|conv_dw)\.', '.dwconv.'),  # mmpretrain, timm
    (r'\.(pointwise_conv1|mlp\.fc1)\.', '.pwconv1.'),
    (r'\.(pointwise_conv2|mlp\.fc2)\.', '.pwconv2.'),
    (r'\.mlp\.grn\.weight$', '.grn.gamma'),  # timm's ConvNeXt V2
    (r'\.mlp\.grn\.bias$', '.grn.beta'),
]
# The image classifier of a classification checkpoint: official final norm and head, timm's head.
CLASSIFIER_KEY = re.compile(r'^(norm|head|norm_pre)\.')
OUTPUT_NORM_KEY = re.compile(r'^norm\d\.')
BACKBONE_KEY = re.compile(r'^(downsample_layers|stages|norm\d)\.')
# ConvNeXt V2's FCMAE pre-training files: the encoder in MinkowskiEngine's sparse layout.
FCMAE_KEY = re.compile(r'^encoder\..*\.(kernel|ln\.weight|linear\.weight)$')
MAX_KEYS_SHOWN = 6


def rename_keys(key, renames):
    for pattern, replacement in renames:
        key = re.sub(pattern, replacement, key)
    return key


def rename_timm_module_keys(state_dict, prefix=''):
    """In place: the keys under ``prefix`` that use timm's module names (as convnext_mm 0.1 saved them) get the
    official ones, for loaders that match keys as they are (mmengine's resume and load_from, torch's)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new_key = prefix + rename_keys(key[len(prefix):], TIMM_MODULE_RENAMES)
        if new_key != key:
            state_dict[new_key] = state_dict.pop(key)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the ConvNeXt backbone; the message says why and what to do."""


def read_checkpoint(path_or_url):
    """Load a checkpoint file or URL with torch's safe unpickler (tensors, containers, numpy metadata)."""
    if re.match(r'^(https?|ftp)://', str(path_or_url)):
        return _read_download(path_or_url)
    path = os.fspath(path_or_url)
    if not os.path.isfile(path):
        raise CheckpointError(
            f'ConvNeXt checkpoint {path!r} not found. Download the file (the official ImageNet weights are '
            'listed in the README) into that place, or point init_cfg.checkpoint at its local path, e.g. with '
            '--cfg-options model.backbone.init_cfg.checkpoint=PATH.')
    return _read_file(path)


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


def _read_file(path):
    try:
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


def _corrupt(path, error):
    return CheckpointError(f'{path} could not be read as a PyTorch checkpoint; it may be truncated or corrupt: '
                           f'download or save it again. Details: {error}')


def _unwrap(checkpoint):
    """The tensor dict inside a checkpoint: under 'state_dict' (mmengine, mmpretrain), 'model' (official)."""
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


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


def select_prefix(state_dict, prefix):
    """The tensors under ``prefix`` with it removed, as mmengine's ``Pretrained(prefix=...)`` does."""
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise CheckpointError(
            f"has no tensors under prefix={prefix!r} (its keys are like {_listing(list(state_dict)[:3])}). Delete "
            "prefix from init_cfg: convnext_mm finds the backbone in a whole model's checkpoint by itself")
    return selected


def convert_state_dict(checkpoint, prefix=None):
    """Map any supported checkpoint layout onto convnext_mm's (the official) parameter names.

    ``prefix``: take only the tensors under it, as mmengine's ``Pretrained(prefix=...)``; without it, a whole
    model's checkpoint (keys under ``backbone.``) gives its backbone. Returns ``(state_dict, ignored)``: the
    backbone's tensors under our names, and the keys that belong to no backbone (the classifier, or a detector's
    neck and heads), as named in the file.
    """
    state_dict = _unwrap(checkpoint)
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError('not a state dict: expected a mapping of parameter names to tensors, '
                              "possibly under 'state_dict' or 'model'")
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}  # DDP wrapping
    ignored = []
    if prefix:
        state_dict = select_prefix(state_dict, prefix)
    elif any(FCMAE_KEY.match(k) for k in state_dict):
        state_dict, ignored = fcmae_to_dense(state_dict)
    # A whole model (mmpretrain classifier, mmdet detector, mmseg segmentor): keep only its backbone.
    has_backbone_prefix = any(k.startswith('backbone.') for k in state_dict)
    converted = {}
    for key, value in state_dict.items():
        if has_backbone_prefix:
            if not key.startswith('backbone.'):
                ignored.append(key)
                continue
            key = key[len('backbone.'):]
        new_key = rename_keys(key, KEY_RENAMES)
        if CLASSIFIER_KEY.match(new_key):
            ignored.append(key)
            continue
        if new_key.endswith(('.grn.gamma', '.grn.beta')):
            value = value.reshape(-1)  # official V2 stores (1, 1, 1, C)
        elif re.search(r'\.pwconv[12]\.weight$', new_key) and value.dim() == 4:
            value = value.flatten(1)  # 1x1 convolutions (timm conv_mlp, mmpretrain linear_pw_conv=False)
        converted[new_key] = value
    return converted, ignored


def describe_arch(state_dict):
    """'depths=[..], dims=[..]' of a converted state dict, to say which model a file belongs to."""
    depths = [len({m.group(1) for k in state_dict for m in [re.match(rf'stages\.{s}\.(\d+)\.', k)] if m})
              for s in range(4)]
    dims = [state_dict[f'stages.{s}.0.dwconv.weight'].shape[0]
            if f'stages.{s}.0.dwconv.weight' in state_dict else '?' for s in range(4)]
    return f'depths={depths}, dims={dims}'


def _listing(keys):
    keys = sorted(keys)
    more = f' ... and {len(keys) - MAX_KEYS_SHOWN} more' if len(keys) > MAX_KEYS_SHOWN else ''
    return ', '.join(keys[:MAX_KEYS_SHOWN]) + more


def load_pretrained(model, path_or_url, prefix=None, logger=None):
    """Load a checkpoint of any supported layout into ``model`` (a ConvNeXt), checking every key and shape.

    Only whole output norms may be absent (a classification file has none); the classifier is ignored.
    Anything else missing, unexpected or of another shape raises :class:`CheckpointError`. ``prefix``: see
    :func:`convert_state_dict`.
    """
    name = str(path_or_url)
    try:
        converted, ignored = convert_state_dict(read_checkpoint(path_or_url), prefix=prefix)
    except CheckpointError as error:
        if name in str(error):
            raise
        raise CheckpointError(f'{name}: {error}') from error
    expected = model.state_dict()
    if not any(BACKBONE_KEY.match(k) for k in converted):
        raise CheckpointError(f'{name} is not a ConvNeXt checkpoint: none of its keys is a ConvNeXt backbone '
                              f'parameter (it has {_listing(converted)})')
    # Output norms of stages the model does not output (e.g. mmpretrain's norm3) are not an error.
    unused_norms = [k for k in converted if OUTPUT_NORM_KEY.match(k) and k not in expected]
    unexpected = [k for k in converted if k not in expected and k not in unused_norms]
    # An output norm is absent as a whole (kept at its init), or loaded as a whole.
    norms_in_file = {k.split('.')[0] for k in converted if OUTPUT_NORM_KEY.match(k)}
    missing = [k for k in expected if k not in converted and (
        not OUTPUT_NORM_KEY.match(k) or k.split('.')[0] in norms_in_file)]
    mismatched = [f'{k} {tuple(v.shape)} in file vs {tuple(expected[k].shape)} in model'
                  for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    if unexpected or missing or mismatched:
        problems = [f'{label}: {_listing(keys)}' for label, keys in (
            ('shape mismatch', mismatched), ('missing from the file', missing), ('not in the model', unexpected))
            if keys]
        raise CheckpointError(
            f'{name} does not fit this ConvNeXt (depths={model.depths}, dims={model.dims}): the file holds '
            f'ConvNeXt {describe_arch(converted)}. Pick the arch (and use_grn) of the file, or the file of the '
            f'arch. ' + '; '.join(problems))
    loadable = {k: v for k, v in converted.items() if k in expected}
    model.load_state_dict(loadable, strict=False)
    absent = sorted(k.split('.')[0] for k in expected if k not in converted and k.endswith('.weight'))
    if logger is not None:
        logger.info(
            f'ConvNeXt: loaded {len(loadable)} tensors from {name}'
            + (f'; expectedly absent: {", ".join(absent)} (output norms, kept at their init)' if absent else '')
            + (f'; ignored {len(ignored) + len(unused_norms)} tensors not part of this backbone: '
               f'{_listing(ignored + unused_norms)}' if ignored or unused_norms else ''))
    return loadable
