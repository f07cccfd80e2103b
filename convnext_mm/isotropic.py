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
from mmengine.registry import MODELS

from . import checkpoint as ckpt
from .backbone import NORM_EPS, ConvNeXtBlock, LayerNorm2d, check_image, freeze, split_init_cfg

# The paper's isotropic models (official release: convnext_isotropic_{small,base,large}).
ISOTROPIC_ARCH_SETTINGS = {
    'small': dict(depth=18, dim=384),
    'base': dict(depth=18, dim=768),
    'large': dict(depth=36, dim=1024),
}
PATCH_SIZE = 16
# The classifier's keys in official files (pooled-feature norm and head), left out.
ISO_CLASSIFIER_KEY = re.compile(r'^(norm|head)\.')


def isotropic_preset(depth, dim):
    """The preset name of ``depth`` and ``dim`` ('small', ...), or None for a custom arch."""
    return next((name for name, s in ISOTROPIC_ARCH_SETTINGS.items() if s == dict(depth=depth, dim=dim)), None)


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


@MODELS.register_module()
class ConvNeXtIsotropic(ckpt.StrictLoading, BaseModule):
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
            (its own loading, as ConvNeXt's); the classifier (``norm``, ``head``) is left out.
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
        # As ConvNeXt: the other initializers, then the file, checked by the model's own loading.
        super().init_weights()
        if self.pretrained_cfg is not None:
            ckpt.load_pretrained(self, self.pretrained_cfg['checkpoint'], prefix=self.pretrained_cfg.get('prefix'),
                                 logger=MMLogger.get_current_instance())

    # Loading (StrictLoading): the official names are this module's; only the classifier is left out.
    @staticmethod
    def own_names(given):
        classifier = [key for key in given if ISO_CLASSIFIER_KEY.match(key)]
        return {k: v for k, v in given.items() if k not in classifier}, classifier

    def describe_misfit(self, converted, missing, unexpected, reshaped):
        """What the weights hold against what the config builds, and what to write."""
        problems = self.misfit_problems(converted, missing, unexpected, reshaped)
        if any(k.startswith(('downsample_layers.', 'stages.')) for k in converted):
            return f"they are a hierarchical ConvNeXt's (write type='ConvNeXt'). {problems}"
        depth = len({m.group(1) for k in converted for m in [re.match(r'blocks\.(\d+)\.', k)] if m})
        stem = converted.get('stem.weight')
        dim = stem.shape[0] if stem is not None else None
        file_gamma = any(k.endswith('.gamma') for k in converted)
        model_gamma = self.blocks[0].gamma is not None
        preset = isotropic_preset(depth, dim)
        write = []
        if (depth, dim) != (self.depth, self.dim):
            write.append(f"arch='{preset}'" if preset else f'arch=dict(depth={depth}, dim={dim})')
        if file_gamma != model_gamma:
            write.append(f'layer_scale_init_value={1e-6 if file_gamma else 0}')
        advice = (f"Write {', '.join(write)} in the config's model.backbone" if write else
                  'Give weights of the backbone the config builds')
        return (f'they are an isotropic ConvNeXt of {depth} blocks x {dim}, {"with" if file_gamma else "without"} '
                f'layer scale; the config builds {self.arch_name()}. {advice}. {problems}')

    @property
    def out_channels(self):
        """The width of each output (all at stride 16), in the order of ``out_indices``."""
        return [self.dim] * len(self.out_indices)

    def arch_name(self):
        preset = isotropic_preset(self.depth, self.dim)
        gamma = 'with' if self.blocks[0].gamma is not None else 'without'
        return (f'ConvNeXt-{preset} (iso.)' if preset else f'an isotropic ConvNeXt of {self.depth} blocks x '
                f'{self.dim}') + f', {gamma} layer scale'

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
        freeze(frozen)

    def _check_input(self, x):
        check_image(x, 'ConvNeXtIsotropic', self.in_channels, PATCH_SIZE, 'its patch size and stride')
