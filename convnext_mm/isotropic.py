"""The isotropic ConvNeXt ("A ConvNet for the 2020s", Section 3.3 / Appendix: "Isotropic ConvNeXt vs. ViT") as a
detection and segmentation backbone.

Data path, as the official ``models/convnext_isotropic.py``: image -> ``stem`` (a 16x16 stride-16 conv, no norm)
-> ``blocks.0..depth-1`` (ConvNeXt blocks, all at one width, no downsampling) -> one channels-first LayerNorm
``norm{i}`` per requested block, every output at stride 16. The classifier's ``norm`` and ``head`` are not built.
A plain, single-scale backbone like ViT's: detectors put :class:`convnext_mm.simple_fpn.SimpleFeaturePyramid`
(ViTDet's simple pyramid) after it, segmentors mmseg's ``MultiLevelNeck``.
"""
import re

import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint
from mmengine.logging import MMLogger
from mmengine.model import BaseModule

from . import checkpoint as ckpt
from .backbone import NORM_EPS, ConvNeXtBlock, LayerNorm2d, split_init_cfg
from .registry import register_in_hosts

# The paper's isotropic models (official release: convnext_isotropic_{small,base,large}).
ISOTROPIC_ARCH_SETTINGS = {
    'small': dict(depth=18, dim=384),
    'base': dict(depth=18, dim=768),
    'large': dict(depth=36, dim=1024),
}
PATCH_SIZE = 16
# Official checkpoint keys: the backbone's, and the classifier's (pooled-feature norm and head), which is left out.
ISO_BACKBONE_KEY = re.compile(r'^(stem|blocks\.\d+)\.')
ISO_CLASSIFIER_KEY = re.compile(r'^(norm|head)\.')
ISO_OUTPUT_NORM_KEY = re.compile(r'^norm\d+\.')


def resolve_isotropic_arch(arch):
    """``arch`` preset name or ``dict(depth=int, dim=int)`` -> (depth, dim)."""
    if isinstance(arch, str):
        if arch not in ISOTROPIC_ARCH_SETTINGS:
            raise ValueError(f'ConvNeXtIsotropic: unknown arch {arch!r}; choose one of '
                             f'{sorted(ISOTROPIC_ARCH_SETTINGS)} or pass dict(depth=18, dim=384)')
        arch = ISOTROPIC_ARCH_SETTINGS[arch]
    if not isinstance(arch, dict) or set(arch) != {'depth', 'dim'}:
        raise ValueError(f'ConvNeXtIsotropic: arch must be a preset name or a dict with exactly the keys depth and '
                         f'dim, e.g. dict(depth=18, dim=384), got {arch!r}')
    depth, dim = arch['depth'], arch['dim']
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (depth, dim)):
        raise ValueError(f'ConvNeXtIsotropic: arch depth and dim must be positive integers, got depth={depth!r}, '
                         f'dim={dim!r}')
    return depth, dim


def resolve_block_indices(out_indices, depth):
    """Block indices (negatives count from the end, as mmseg's VisionTransformer) -> sorted tuple in 0..depth-1."""
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    resolved = []
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -depth <= index < depth:
            raise ValueError(f'ConvNeXtIsotropic: out_indices entry {index!r} is out of range for {depth} blocks; '
                             f'allowed are 0..{depth - 1} or {-depth}..-1 (block indices, every output at '
                             'stride 16)')
        resolved.append(index % depth)
    if not resolved or len(set(resolved)) != len(resolved):
        raise ValueError(f'ConvNeXtIsotropic: out_indices must name distinct blocks, at least one, got '
                         f'{out_indices!r}')
    return tuple(sorted(resolved))


@register_in_hosts('MODELS')
class ConvNeXtIsotropic(BaseModule):
    """Isotropic ConvNeXt backbone: a stride-16 patchify stem and one stack of ConvNeXt blocks at a single width,
    emitting one LayerNorm-ed stride-16 map per block index in ``out_indices``.

    Module names are the official release's (``stem``, ``blocks.N.{dwconv,norm,pwconv1,pwconv2,gamma}``), so the
    official ``convnext_iso_*_1k_224_ema.pth`` files load as they are; ``norm{i}`` are the output norms.

    Args:
        arch: 'small' (18 blocks x 384), 'base' (18 x 768), 'large' (36 x 1024), or ``dict(depth=, dim=)``.
        in_channels: channels of the input image.
        out_indices: blocks whose outputs are returned (negatives count from the end); default the last.
        drop_path_rate: stochastic depth rate, rising linearly from 0 over the blocks to this value.
        layer_scale_init_value: initial layer scale; 0 (the official S and B) builds none. The official L
            was trained with 1e-6, so its file holds ``gamma``.
        frozen_blocks: k > 0 freezes the stem and blocks 0..k-1 (and the output norms of those blocks): no
            gradient, eval mode after ``train()``. 0 (or -1, mmdet's "none") freezes nothing.
        with_cp: non-reentrant gradient checkpointing of each block, to save memory in training.
        init_cfg: mmengine init config. ``dict(type='Pretrained', checkpoint=PATH_OR_URL[, prefix=...])`` loads
            an official isotropic file (or one saved by convnext_mm), checking every key and shape
            (:func:`load_isotropic_pretrained`); the classifier (``norm``, ``head``) is left out.
        pretrained: the deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
    """

    def __init__(self,
                 arch='small',
                 in_channels=3,
                 out_indices=(-1, ),
                 drop_path_rate=0.,
                 layer_scale_init_value=0.,
                 frozen_blocks=0,
                 with_cp=False,
                 init_cfg=None,
                 pretrained=None):
        self.pretrained_cfg, init_cfg = split_init_cfg(init_cfg, pretrained)
        if init_cfg is None and self.pretrained_cfg is None:
            init_cfg = [dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.)]  # official init
        super().__init__(init_cfg=init_cfg)
        depth, dim = resolve_isotropic_arch(arch)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'ConvNeXtIsotropic: in_channels={in_channels!r} must be a positive integer (3 for RGB)')
        if isinstance(frozen_blocks, bool) or not isinstance(frozen_blocks, int) or not -1 <= frozen_blocks <= depth:
            raise ValueError(f'ConvNeXtIsotropic: frozen_blocks={frozen_blocks!r} is out of range; allowed are '
                             f'0..{depth} (k freezes the stem and blocks 0..k-1; -1 also means none)')
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'ConvNeXtIsotropic: drop_path_rate={drop_path_rate!r} must be in [0, 1)')
        if not layer_scale_init_value >= 0:
            raise ValueError(f'ConvNeXtIsotropic: layer_scale_init_value={layer_scale_init_value!r} must be >= 0 '
                             '(0: no layer scale, as the official S and B; 1e-6 as the official L)')
        self.depth, self.dim = depth, dim
        self.in_channels = in_channels
        self.out_indices = resolve_block_indices(out_indices, depth)
        self.frozen_blocks = max(frozen_blocks, 0)
        self.with_cp = with_cp

        self.stem = nn.Conv2d(in_channels, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        # On the CPU whatever the default device (a model built on 'meta' to count its parameters).
        drop_path_rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(dim, drop_path_rates[i], layer_scale_init_value) for i in range(depth)])
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(dim, eps=NORM_EPS))
        self._freeze_blocks()

    def init_weights(self):
        # As ConvNeXt: the other initializers, then the file through the loader that checks every key.
        super().init_weights()
        if self.pretrained_cfg is not None:
            load_isotropic_pretrained(self, self.pretrained_cfg['checkpoint'],
                                      prefix=self.pretrained_cfg.get('prefix'),
                                      logger=MMLogger.get_current_instance())

    def forward(self, x):
        self._check_input(x)
        # channels_last throughout, as ConvNeXt: the blocks' permutes become free views.
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        outs = []
        last = self.out_indices[-1]
        for i, block in enumerate(self.blocks):
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
            if i == last:
                break  # blocks after the last output would only cost time
        return tuple(outs)

    def train(self, mode=True):
        super().train(mode)
        self._freeze_blocks()
        return self

    def _freeze_blocks(self):
        if self.frozen_blocks == 0:
            return
        frozen = [self.stem] + list(self.blocks[:self.frozen_blocks])
        frozen += [getattr(self, f'norm{i}') for i in self.out_indices if i < self.frozen_blocks]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'ConvNeXtIsotropic expects an NCHW image tensor (4 dims: batch, channels, height, '
                             f'width), got {shape}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'ConvNeXtIsotropic was built with in_channels={self.in_channels} but the input has '
                             f'{x.shape[1]} channels (shape {tuple(x.shape)}); pass NCHW images or set '
                             f'in_channels={x.shape[1]}')
        if min(x.shape[2:]) < PATCH_SIZE:
            raise ValueError(f'ConvNeXtIsotropic needs an input of at least {PATCH_SIZE}x{PATCH_SIZE} pixels (its '
                             f'patch size and stride), got {x.shape[2]}x{x.shape[3]}; resize or pad the image')


def isotropic_state_dict(checkpoint, prefix=None):
    """``(state_dict, ignored)`` of the isotropic backbone in a checkpoint: the official release's
    ``{'model': {stem, blocks, norm, head}}``, a bare backbone saved by convnext_mm, or a whole detector /
    segmentor (keys under ``backbone.``). ``prefix`` takes only the tensors under it, as mmengine's
    ``Pretrained(prefix=...)``. ``ignored``: the classifier's and, in a whole model, the neck's and heads' keys."""
    state_dict = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ckpt.CheckpointError('not a state dict: expected a mapping of parameter names to tensors, '
                                   "possibly under 'state_dict' or 'model'")
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}  # DDP wrapping
    if prefix:
        state_dict = ckpt.select_prefix(state_dict, prefix)
    ignored = []
    if any(k.startswith('backbone.') for k in state_dict):
        ignored = [k for k in state_dict if not k.startswith('backbone.')]
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    ignored += [k for k in state_dict if ISO_CLASSIFIER_KEY.match(k)]
    return {k: v for k, v in state_dict.items() if not ISO_CLASSIFIER_KEY.match(k)}, ignored


def describe_isotropic(state_dict):
    """'depth=.., dim=.., layer scale ..' of an isotropic state dict, to say which model a file belongs to."""
    depth = len({m.group(1) for k in state_dict for m in [re.match(r'blocks\.(\d+)\.', k)] if m})
    weight = state_dict.get('stem.weight')
    dim = weight.shape[0] if weight is not None else '?'
    has_gamma = any(k.endswith('.gamma') for k in state_dict)
    return f'depth={depth}, dim={dim}, {"with" if has_gamma else "without"} layer scale (gamma)'


def _listing(keys):
    keys = sorted(keys)
    shown = ckpt.MAX_KEYS_SHOWN
    return ', '.join(keys[:shown]) + (f' ... and {len(keys) - shown} more' if len(keys) > shown else '')


def load_isotropic_pretrained(model, path_or_url, prefix=None, logger=None):
    """Load an isotropic ConvNeXt checkpoint into ``model``, checking every key and shape.

    The stem and every block must be in the file with the model's shapes; the classifier is left out; output norms
    (``norm{i}``) may be absent as a whole (an official file has none). Anything else raises
    :class:`convnext_mm.checkpoint.CheckpointError` naming the file's model and what to change."""
    name = str(path_or_url)
    try:
        converted, ignored = isotropic_state_dict(ckpt.read_checkpoint(path_or_url), prefix=prefix)
    except ckpt.CheckpointError as error:
        if name in str(error):
            raise
        raise ckpt.CheckpointError(f'{name}: {error}') from error
    if not any(ISO_BACKBONE_KEY.match(k) for k in converted):
        hint = (' It looks like a hierarchical ConvNeXt (type=\'ConvNeXt\') checkpoint.'
                if any(k.startswith(('downsample_layers.', 'stages.')) for k in converted) else '')
        raise ckpt.CheckpointError(f'{name} is not an isotropic ConvNeXt checkpoint: none of its keys is a stem or '
                                   f'blocks parameter (it has {_listing(converted)}).{hint}')
    expected = model.state_dict()
    # The backbone's all-or-nothing rule (checkpoint.compare_with_model). Its output-norm pattern is ConvNeXt's
    # norm0..norm3, so this model's norm{i} (up to norm35) take the same rule here: absent as a whole is no error.
    is_norm = ISO_OUTPUT_NORM_KEY.match
    missing, unexpected, reshaped, _ = ckpt.compare_with_model(
        {k: v for k, v in expected.items() if not is_norm(k)}, {k: v for k, v in converted.items() if not is_norm(k)})
    norms_in_file = {k.split('.')[0] for k in converted if is_norm(k)}
    unused_norms = [k for k in converted if is_norm(k) and k not in expected]
    missing += [k for k in expected if is_norm(k) and k not in converted and k.split('.')[0] in norms_in_file]
    reshaped += [k for k in converted if is_norm(k) and k in expected and converted[k].shape != expected[k].shape]
    mismatched = [f'{k} {tuple(converted[k].shape)} in file vs {tuple(expected[k].shape)} in model' for k in reshaped]
    if unexpected or missing or mismatched:
        problems = [f'{label}: {_listing(keys)}' for label, keys in (
            ('shape mismatch', mismatched), ('missing from the file', missing), ('not in the model', unexpected))
            if keys]
        model_gamma = any(k.endswith('.gamma') for k in expected)
        file_gamma = any(k.endswith('.gamma') for k in converted)
        advice = ''
        if model_gamma != file_gamma:
            advice = (' The file has layer scale: set layer_scale_init_value=1e-6 (the official L).' if file_gamma
                      else ' The file has no layer scale: set layer_scale_init_value=0 (the official S and B).')
        raise ckpt.CheckpointError(
            f'{name} does not fit this ConvNeXtIsotropic (depth={model.depth}, dim={model.dim}, '
            f'{"with" if model_gamma else "without"} layer scale): the file holds isotropic ConvNeXt '
            f'{describe_isotropic(converted)}. Pick the arch of the file (small: 18 x 384, base: 18 x 768, '
            f'large: 36 x 1024), or the file of the arch.{advice} ' + '; '.join(problems))
    loadable = {k: v for k, v in converted.items() if k in expected}
    model.load_state_dict(loadable, strict=False)
    if logger is not None:
        absent = sorted({k.split('.')[0] for k in expected if k not in converted})
        logger.info(
            f'ConvNeXtIsotropic: loaded {len(loadable)} tensors from {name}'
            + (f'; expectedly absent: {", ".join(absent)} (output norms, kept at their init)' if absent else '')
            + (f'; ignored {len(ignored) + len(unused_norms)} tensors not part of this backbone: '
               f'{_listing(ignored + unused_norms)}' if ignored or unused_norms else ''))
    return loadable
