"""What both ConvNeXt backbones are made of: the channels-first LayerNorm, ConvNeXt V2's GRN, the ConvNeXt block,
and :class:`ConvNeXtBase`, which holds what the hierarchical and the isotropic backbone share (argument checks,
output norms, freezing, gradient checkpointing, compiling, input checks, the layer-decay protocol; loading comes
from :class:`~convnext_mm.checkpoint.StrictLoading`)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from . import cpu_fast_path
from .checkpoint import StrictLoading

NORM_EPS = 1e-6
# The official layer-decay rules (get_layer_depth's decay_type).
DECAY_TYPES = ('layer_wise', 'stage_wise')
# The official initialization of both backbones, where init_cfg gives none.
DEFAULT_INIT_CFG = [dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.)]


@MODELS.register_module(name='ConvNeXtLayerNorm2d')
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor ("channels-first" in the paper's code)."""

    def forward(self, x):
        # Normalizing the last dim of the NHWC view is exact and lets PyTorch use its fused kernel. The backbones
        # keep their maps channels_last, so both permutes are free views.
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global response normalization of ConvNeXt V2, on NHWC input."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        # The norms and their ratio in float32 at least (bf16 or fp16 maps under autocast: rounded to 8 or 11 bits
        # they would scale every channel by their rounding error), then in the dtype the product had before
        # (x's and gamma's: a half-precision model stays in half precision).
        spatial_norm = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True,
                                                dtype=torch.promote_types(x.dtype, torch.float32))
        relative_norm = spatial_norm / (spatial_norm.mean(dim=-1, keepdim=True) + self.eps)
        relative_norm = relative_norm.to(torch.promote_types(x.dtype, self.gamma.dtype))
        # The paper's gamma * (x * relative_norm) + beta + x, regrouped so the 4C-wide map takes one pass, not
        # four (about 2x faster): the per-image, per-channel factor 1 + gamma * relative_norm is tiny.
        return torch.addcmul(self.beta, x, 1 + self.gamma * relative_norm)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv (``dilation``: its dilation, padded to keep the size), LayerNorm, Linear to 4C, GELU,
    [GRN], Linear to C, [layer scale], drop path, residual.

    On the CPU the part after the depthwise conv may run in oneDNN (same arithmetic, one rule:
    :func:`convnext_mm.cpu_fast_path.block_path`)."""

    def __init__(self, dim, drop_path=0., layer_scale_init_value=1e-6, use_grn=False, norm_eps=NORM_EPS, dilation=1):
        super().__init__()
        # dilation > 1 in the stages that a smaller output stride dilates (timm's rule): same weights, same size.
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3 * dilation, dilation=dilation, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim) if use_grn else None
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # V2 replaces layer scale by GRN.
        if layer_scale_init_value > 0 and not use_grn:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        shortcut = x
        # NCHW -> NHWC for the norm and Linears: a free view, as the backbones keep their maps channels_last.
        x = self.dwconv(x).permute(0, 2, 3, 1)
        path = cpu_fast_path.block_path(self, x)
        if path == cpu_fast_path.INFERENCE:  # fused, in cache-sized chunks
            return cpu_fast_path.pointwise(self, x, shortcut)
        x = self.norm(x)
        if path == cpu_fast_path.TRAINING:  # both Linears and their gradients in oneDNN
            x = cpu_fast_path.mlp(self, x)
        else:
            x = self.act(self.pwconv1(x))
            if self.grn is not None:
                x = self.grn(x)
            x = self.pwconv2(x)
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


def run_block(block, x, with_cp):
    """``block(x)``, under non-reentrant gradient checkpointing where ``with_cp`` is set and gradients are on."""
    if with_cp and torch.is_grad_enabled():
        return checkpoint.checkpoint(block, x, use_reentrant=False)
    return block(x)


# ---------------------------------------------------------------- argument checks, for both backbones
def resolve_arch(owner, arch, presets, example):
    """``arch``, a preset name of ``presets`` or a dict with the presets' keys -> that dict (values unchecked)."""
    if isinstance(arch, str):
        if arch not in presets:
            raise ValueError(f'{owner}: unknown arch {arch!r}; choose one of {sorted(presets)} or pass {example}')
        return dict(presets[arch])
    keys = sorted(next(iter(presets.values())))
    if not isinstance(arch, dict) or sorted(arch) != keys:
        raise ValueError(f'{owner}: arch must be a preset name or a dict with exactly the keys {" and ".join(keys)}, '
                         f'e.g. {example}, got {arch!r}')
    return dict(arch)


def is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def resolve_out_indices(owner, out_indices, count, unit, note):
    """Any subset of ``count`` outputs (negatives count from the end) -> sorted tuple of indices."""
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    resolved = []
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -count <= index < count:
            raise ValueError(f'{owner}: out_indices entry {index!r} is out of range for {count} {unit}s; allowed are '
                             f'0..{count - 1} or {-count}..-1 ({note})')
        resolved.append(index % count)
    if not resolved or len(set(resolved)) != len(resolved):
        raise ValueError(f'{owner}: out_indices must name distinct {unit}s, at least one, got {out_indices!r}')
    return tuple(sorted(resolved))


def check_frozen(owner, name, value, count, meaning):
    """``frozen_stages`` / ``frozen_blocks`` in -1..count (-1: mmdet's "none") -> 0..count."""
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= count:
        raise ValueError(f'{owner}: {name}={value!r} is out of range; allowed are 0..{count} ({meaning}; -1 also '
                         'means none)')
    return max(value, 0)


def drop_path_rates(owner, drop_path_rate, num_blocks):
    """The stochastic depth rate of each block, rising linearly from 0 to ``drop_path_rate`` over them."""
    if not 0 <= drop_path_rate < 1:
        raise ValueError(f'{owner}: drop_path_rate={drop_path_rate!r} must be in [0, 1)')
    # On the CPU whatever the default device (a model built on 'meta' to count its parameters).
    return torch.linspace(0, drop_path_rate, num_blocks, device='cpu').tolist()


def freeze(modules):
    """No gradient and eval mode for ``modules`` (frozen stages or blocks)."""
    for module in modules:
        module.eval()
        for param in module.parameters():
            param.requires_grad = False


def check_image(x, owner, in_channels, min_size, why):
    """A ValueError naming ``owner`` and the fix unless ``x`` is an NCHW batch of ``in_channels`` channels and at
    least ``min_size`` pixels a side (``why``: what sets that size)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f'{owner} expects an NCHW image tensor (4 dims: batch, channels, height, width), '
                         f'got {shape}')
    if x.shape[1] != in_channels:
        raise ValueError(f'{owner} was built with in_channels={in_channels} but the input has {x.shape[1]} channels '
                         f'(shape {tuple(x.shape)}); pass NCHW images or set in_channels={x.shape[1]}')
    if min(x.shape[2:]) < min_size:
        raise ValueError(f'{owner} needs an input of at least {min_size}x{min_size} pixels ({why}), got '
                         f'{x.shape[2]}x{x.shape[3]}; resize or pad the image')


class ConvNeXtBase(StrictLoading, BaseModule):
    """What the two ConvNeXt backbones share. A subclass builds its layers in ``__init__`` between this class's
    ``__init__`` (loading config, ``in_channels``) and :meth:`finish` (output norms, freezing, compiling), and gives:

    - ``arch_settings``, ``own_names``, ``arch_of_weights``, ``arch_args()``, ``arch_name(args=None)`` for its loading
      (:class:`~convnext_mm.checkpoint.StrictLoading`);
    - ``min_input_size`` and ``input_size_reason`` for the input check;
    - ``frozen_modules()``: what ``frozen_stages`` / ``frozen_blocks`` freezes;
    - ``decay_layers_needed(decay_type)``, ``default_decay_layers()`` and ``layer_id(name, decay_type, num_layers)``
      for :meth:`get_layer_depth`."""
    min_input_size = None
    input_size_reason = None

    def __init__(self, in_channels, init_cfg, pretrained):
        super().__init__(init_cfg=init_cfg, pretrained=pretrained, default_init_cfg=DEFAULT_INIT_CFG)
        if not is_positive_int(in_channels):
            raise ValueError(f'{type(self).__name__}: in_channels={in_channels!r} must be a positive integer (3 for '
                             'RGB)')
        self.in_channels = in_channels

    def finish(self, out_indices, width_of, compile, norm_eps=NORM_EPS):
        """One output norm ``norm{i}`` per index in ``out_indices`` (``width_of(i)`` channels, LayerNorm epsilon
        ``norm_eps``), the frozen part frozen, and ``compile``: False, or True or a dict of ``torch.compile``
        arguments to compile the forward (``nn.Module.compile``: module tree and parameter names stay, so checkpoints
        and layer decay do too)."""
        if not isinstance(compile, (bool, dict)):
            raise ValueError(f'{type(self).__name__}: compile={compile!r} must be True, False or a dict of '
                             "torch.compile arguments, e.g. dict(mode='max-autotune')")
        self.out_indices = out_indices
        for i in out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(width_of(i), eps=norm_eps))
        self.train()
        if compile:
            # One graph with static shapes (torch 2.13's inductor fails on dynamic channels_last shapes): each new
            # input size compiles anew.
            self.compile(**{'dynamic': False, **(compile if isinstance(compile, dict) else {})})

    def output(self, i, x):
        """Output ``i``: its LayerNorm of ``x``, as plain contiguous NCHW (what necks, heads and mmcv ops expect;
        the copy is small next to a stage)."""
        return getattr(self, f'norm{i}')(x).contiguous()

    def check_input(self, x):
        check_image(x, type(self).__name__, self.in_channels, self.min_input_size, self.input_size_reason)

    def train(self, mode=True):
        super().train(mode)
        freeze(self.frozen_modules())
        return self

    @property
    def out_channels(self):
        """The width of each output, in the order of ``out_indices``."""
        return [getattr(self, f'norm{i}').normalized_shape[0] for i in self.out_indices]

    def get_layer_depth(self, param_name, prefix='', decay_type='layer_wise', num_layers=None):
        """``(layer_id, num_layers + 2)`` of the parameter ``param_name`` (a full name; ``prefix``: the backbone's
        within it, e.g. 'backbone.'), by the official decay rules (``decay_type`` 'layer_wise' or 'stage_wise'):
        mmpretrain's protocol, which its LearningRateDecayOptimWrapperConstructor and
        :class:`~convnext_mm.layer_decay.ConvNeXtLayerDecayOptimizerConstructor` ask. A parameter outside the
        backbone and the output norms get ``num_layers + 1``; the learning rate of ``layer_id`` is
        ``base_lr * decay_rate ** (num_layers + 1 - layer_id)``. ``num_layers`` defaults to mmpretrain's
        (:meth:`default_decay_layers`); fewer than ``decay_layers_needed`` would not rise from stem to head."""
        if num_layers is None:
            num_layers = self.default_decay_layers()
        needed = self.decay_layers_needed(decay_type)
        if num_layers < needed:
            arch = ', '.join(f'{key}={value}' for key, value in self.arch_args()['arch'].items())
            raise ValueError(f'num_layers={num_layers} is too small for {self.arch_name()} ({arch}): {decay_type} '
                             f'needs num_layers >= {needed} so that layer ids rise from the stem to the head')
        if not param_name.startswith(prefix):
            return num_layers + 1, num_layers + 2
        return self.layer_id(param_name[len(prefix):], decay_type, num_layers), num_layers + 2
