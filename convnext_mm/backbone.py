"""The ConvNeXt backbone for mmdet and mmseg ("A ConvNet for the 2020s", Liu et al., CVPR 2022).

Data path: image -> stem (``downsample_layers.0``: 4x4 stride-4 conv, LayerNorm) -> four stages of blocks, stages
1-3 each after a downsample layer (``downsample_layers.1..3``: LayerNorm, 2x2 stride-2 conv) -> one channels-first
LayerNorm ``norm{i}`` per requested output, at strides 4, 8, 16, 32.
``output_stride=16`` or ``8`` dilates the last one or two stages instead of downsampling them (timm's ConvNeXt
rule), with the same weights: strides 4, 8, 16, 16 or 4, 8, 8, 8.
The un-normalized map goes on to the next stage. ``use_grn=True`` gives ConvNeXt V2 blocks.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS

from . import checkpoint
from .blocks import (DECAY_TYPES, NORM_EPS, ConvNeXtBase, ConvNeXtBlock, LayerNorm2d, check_frozen, drop_path_rates,
                     is_positive_int, resolve_arch, resolve_out_indices, run_block)

# Depths and widths from the ConvNeXt (V1) and ConvNeXt V2 papers, and open_clip's convnext_xxlarge (CLIP).
ARCH_SETTINGS = {
    'atto': dict(depths=[2, 2, 6, 2], dims=[40, 80, 160, 320]),
    'femto': dict(depths=[2, 2, 6, 2], dims=[48, 96, 192, 384]),
    'pico': dict(depths=[2, 2, 6, 2], dims=[64, 128, 256, 512]),
    'nano': dict(depths=[2, 2, 8, 2], dims=[80, 160, 320, 640]),
    'tiny': dict(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768]),
    'small': dict(depths=[3, 3, 27, 3], dims=[96, 192, 384, 768]),
    'base': dict(depths=[3, 3, 27, 3], dims=[128, 256, 512, 1024]),
    'large': dict(depths=[3, 3, 27, 3], dims=[192, 384, 768, 1536]),
    'xlarge': dict(depths=[3, 3, 27, 3], dims=[256, 512, 1024, 2048]),
    'huge': dict(depths=[3, 3, 27, 3], dims=[352, 704, 1408, 2816]),
    'xxlarge': dict(depths=[3, 4, 30, 3], dims=[384, 768, 1536, 3072]),
}
# The LayerNorm epsilon of the presets whose released weights were trained with another than the paper's 1e-6
# (timm's and open_clip's convnext_xxlarge: 1e-5). ``norm_eps=None`` takes this, else 1e-6.
ARCH_NORM_EPS = {'xxlarge': 1e-5}
NUM_STAGES = 4
TOTAL_STRIDE = 32
OUTPUT_STRIDES = (8, 16, 32)


def stage_dilations(output_stride):
    """Per stage, (its stride, the dilation of its downsample conv, the dilation of its blocks' depthwise convs)
    for ``output_stride`` 8, 16 or 32, by timm's ConvNeXt rule: once the stride reaches ``output_stride``, a stage
    that would downsample by 2 runs at stride 1 and doubles the dilation; its downsample conv has the dilation
    the previous stage's blocks had (1 where that was 1 or 2, else 2)."""
    plan, stride, dilation = [], 4, 1
    for i in range(NUM_STAGES):
        step = 2 if i > 0 else 1
        if stride >= output_stride and step > 1:
            dilation, step = dilation * step, 1
        stride *= step
        plan.append((stride, 1 if dilation in (1, 2) else 2, dilation))
    return plan


class ConvNeXtStage(nn.Sequential):
    """The blocks of one stage (``stages.S.B``, as in the official code), each under gradient checkpointing
    when ``with_cp`` is set and gradients are on."""

    def __init__(self, blocks, with_cp=False):
        super().__init__(*blocks)
        self.with_cp = with_cp

    def forward(self, x):
        for block in self:
            x = run_block(block, x, self.with_cp)
        return x


def stem_layer(in_channels, dim, norm_eps=NORM_EPS):
    """``downsample_layers.0``: a 4x4 stride-4 conv ("patchify"), then a LayerNorm."""
    return nn.Sequential(nn.Conv2d(in_channels, dim, kernel_size=4, stride=4), LayerNorm2d(dim, eps=norm_eps))


class DilatedDownsampleConv(nn.Conv2d):
    """The 2x2 downsample conv of a dilated stage: stride 1, dilation ``dilation``, and timm's 'same' padding
    (TensorFlow's 'SAME'): ``dilation`` zero rows and columns in all, the odd one at the bottom and right, so the
    map keeps its size. The padding is explicit (PyTorch's padding='same' pads alike, but warns on every call
    for an even kernel and an odd dilation)."""

    def __init__(self, in_dim, dim, dilation):
        super().__init__(in_dim, dim, kernel_size=2, stride=1, dilation=dilation)
        self.same_padding = (dilation // 2, dilation - dilation // 2) * 2  # left, right, top, bottom

    def forward(self, x):
        return super().forward(F.pad(x, self.same_padding))


def downsample_layer(in_dim, dim, norm_eps=NORM_EPS, dilation=None):
    """``downsample_layers.1..3``: a LayerNorm, then a 2x2 stride-2 conv, or in a dilated stage the same 2x2 conv
    at stride 1 with the dilation ``dilation`` (:class:`DilatedDownsampleConv`): the same parameters."""
    conv = (nn.Conv2d(in_dim, dim, kernel_size=2, stride=2) if dilation is None else
            DilatedDownsampleConv(in_dim, dim, dilation))
    return nn.Sequential(LayerNorm2d(in_dim, eps=norm_eps), conv)


def check_output_stride(output_stride):
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise ValueError(f'ConvNeXt: output_stride={output_stride!r} is not supported; allowed are 32 (the '
                         "paper's strides 4, 8, 16, 32), 16 (stage 3 dilated: 4, 8, 16, 16) and 8 (stages 2 and 3 "
                         'dilated: 4, 8, 8, 8)')
    return output_stride


def resolve_norm_eps(norm_eps, arch):
    """``norm_eps`` (None: the preset's, :data:`ARCH_NORM_EPS`, else the paper's 1e-6) -> a positive float, for the
    ``arch`` dict given (a dict equal to a preset counts as that preset)."""
    if norm_eps is None:
        preset = next((name for name, setting in ARCH_SETTINGS.items() if setting == arch), None)
        return ARCH_NORM_EPS.get(preset, NORM_EPS)
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not (
            math.isfinite(norm_eps) and norm_eps > 0):
        raise ValueError(f'ConvNeXt: norm_eps={norm_eps!r} must be a positive number, the LayerNorm epsilon the '
                         "weights were trained with: norm_eps=1e-6 (the paper's, DINOv3's, most files'), 1e-5 "
                         "(CLIP's convnext_xxlarge), or None for the preset's")
    return float(norm_eps)


# mmpretrain's ConvNeXt arguments (a config written for ``type='mmpretrain.ConvNeXt'`` passes them): the values
# that build the paper's detection backbone, which is what this class is. Any other value is refused by name.
MMPRETRAIN_PAPER_VALUES = dict(
    gap_before_final_norm=False,  # True pools stage 3 to a vector, a classifier's input: no maps for a neck
    linear_pw_conv=(True, False),  # a Linear or a 1x1 conv: the same function (1x1-conv files are reshaped)
    norm_cfg=dict(type='LN2d', eps=NORM_EPS),
    act_cfg=dict(type='GELU'),
    stem_patch_size=4,  # the stride-4 first map that the necks' strides assume
)


def check_mmpretrain_args(values):
    """Accept the arguments of mmpretrain's ConvNeXt (``values``) with the values that build the paper's detection
    backbone; refuse any other value, and any other argument, by name and with what to write."""
    for name, value in values.items():
        if name not in MMPRETRAIN_PAPER_VALUES:
            raise TypeError(f'ConvNeXt got an unknown argument {name!r}; its arguments are arch, in_channels, '
                            'out_indices, output_stride, drop_path_rate, layer_scale_init_value, frozen_stages, '
                            'with_cp, use_grn, norm_eps, compile, init_cfg, pretrained, and mmpretrain\'s '
                            f'{", ".join(MMPRETRAIN_PAPER_VALUES)}')
        allowed = MMPRETRAIN_PAPER_VALUES[name]
        if value == allowed or (isinstance(allowed, tuple) and value in allowed):
            continue
        if name == 'gap_before_final_norm':
            advice = ('it pools the last map into one vector per image, an image classifier\'s input; a detector or '
                      'segmentor needs the feature maps. Write gap_before_final_norm=False or delete it')
        else:
            advice = (f'convnext_mm builds the paper\'s ConvNeXt, with {name}={allowed!r}. Delete {name} from the '
                      'config (or write that value)')
        raise ValueError(f'ConvNeXt: {name}={value!r} is not supported: {advice}.')


@MODELS.register_module()
class ConvNeXt(ConvNeXtBase):
    """ConvNeXt backbone emitting one LayerNorm-ed feature map per index in ``out_indices``.

    The module tree and parameter names are the official release's: ``downsample_layers.0`` (the stem) and
    ``downsample_layers.1..3``, ``stages.S.B.{dwconv,norm,pwconv1,pwconv2,gamma,grn}``, ``norm0..3``. So official
    files load as they are, and mmdet's and mmseg's own ``LearningRateDecayOptimizerConstructor`` give every
    parameter the official layer id.

    Args:
        arch: a preset (atto, femto, pico, nano, tiny, small, base, large, xlarge, huge, xxlarge) or
            ``dict(depths=[...], dims=[...])``.
        in_channels: channels of the input image.
        out_indices: stages whose outputs are returned (strides 4, 8, 16, 32 for 0..3).
        output_stride: 32 (default), or 16 or 8 for dense prediction (DeepLab's heads): the last one or two
            stages dilated instead of downsampled, as timm's ConvNeXt does, with the same parameters (names and
            shapes), so every file that loads at 32 loads. Outputs at strides 4, 8, 16, 16 (16) or 4, 8, 8, 8 (8);
            :attr:`out_strides` gives them.
        drop_path_rate: stochastic depth rate, rising linearly from 0 over all blocks to this value.
        layer_scale_init_value: initial layer scale; 0 disables layer scale. Ignored with ``use_grn``.
        frozen_stages: k freezes stages 0..k-1 (downsample layer, blocks and output norm of each):
            no gradient, eval mode after ``train()``. 0 (or -1, mmdet's convention) freezes nothing.
        with_cp: non-reentrant gradient checkpointing of each block, to save memory in training.
        use_grn: ConvNeXt V2 blocks (global response normalization after GELU, no layer scale).
        norm_eps: the epsilon of every LayerNorm, as the weights were trained: None (default) gives the preset's,
            1e-5 for 'xxlarge' (CLIP's convnext_xxlarge), else the paper's 1e-6. A transformers file with its
            config.json beside it is checked against it on loading.
        compile: ``torch.compile`` the backbone's forward, as one graph with static shapes: each new input size
            compiles anew, for minutes on a CPU. A dict gives torch.compile's arguments (e.g.
            ``dict(mode='max-autotune')``). Not faster on a CPU: docs/benchmarks.md. mmengine's ``compile`` config
            key compiles the whole ``train_step`` instead, which torch 2.13's dynamo fails on for mmdet's detectors.
        init_cfg: mmengine init config, a dict or a list of dicts. ``dict(type='Pretrained',
            checkpoint=PATH_OR_URL[, prefix='backbone.'])`` loads the official, timm, mmpretrain, transformers,
            ConvNeXt V2 (also FCMAE) or convnext_mm checkpoint layouts, checking every key
            (:mod:`convnext_mm.checkpoint`).
        pretrained: the deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``
            (mmseg's ``EncoderDecoder(pretrained=...)`` passes it).
        mmpretrain_args: mmpretrain's ConvNeXt arguments (gap_before_final_norm, linear_pw_conv, norm_cfg, act_cfg,
            stem_patch_size), accepted so that its configs need no other edit; the values that build the paper's
            backbone only (``MMPRETRAIN_PAPER_VALUES``), anything else is an error that says what to write.
    """
    arch_settings = ARCH_SETTINGS
    own_names = staticmethod(checkpoint.to_backbone_names)
    arch_of_weights = staticmethod(checkpoint.arch_of_state_dict)
    input_size_reason = 'its output stride'

    def __init__(self,
                 arch='tiny',
                 in_channels=3,
                 out_indices=(0, 1, 2, 3),
                 output_stride=TOTAL_STRIDE,
                 drop_path_rate=0.,
                 layer_scale_init_value=1e-6,
                 frozen_stages=0,
                 with_cp=False,
                 use_grn=False,
                 norm_eps=None,
                 compile=False,
                 init_cfg=None,
                 pretrained=None,
                 **mmpretrain_args):
        check_mmpretrain_args(mmpretrain_args)
        super().__init__(in_channels, init_cfg, pretrained)
        arch = resolve_arch('ConvNeXt', arch, ARCH_SETTINGS, 'dict(depths=[...], dims=[...]) with 4 entries each')
        depths, dims = list(arch['depths']), list(arch['dims'])
        if len(depths) != NUM_STAGES or len(dims) != NUM_STAGES or not all(map(is_positive_int, depths + dims)):
            raise ValueError(f'ConvNeXt: arch depths and dims need {NUM_STAGES} positive integers each, '
                             f'got depths={depths}, dims={dims}')
        self.depths, self.dims, self.use_grn = depths, dims, use_grn
        self.norm_eps = norm_eps = resolve_norm_eps(norm_eps, dict(depths=depths, dims=dims))
        self.frozen_stages = check_frozen('ConvNeXt', 'frozen_stages', frozen_stages, NUM_STAGES,
                                          'k freezes stages 0..k-1')
        rates = drop_path_rates('ConvNeXt', drop_path_rate, sum(depths))
        self.output_stride = self.min_input_size = check_output_stride(output_stride)
        plan = stage_dilations(output_stride)
        self.stage_strides = [stride for stride, _, _ in plan]

        self.downsample_layers = nn.ModuleList([stem_layer(in_channels, dims[0], norm_eps)] + [
            downsample_layer(dims[i - 1], dims[i], norm_eps, plan[i][1] if plan[i][2] > 1 else None)
            for i in range(1, NUM_STAGES)])
        self.stages = nn.ModuleList()
        for i in range(NUM_STAGES):
            first = sum(depths[:i])
            self.stages.append(ConvNeXtStage([
                ConvNeXtBlock(dims[i], rates[first + j], layer_scale_init_value, use_grn, norm_eps, plan[i][2])
                for j in range(depths[i])
            ], with_cp=with_cp))
        out_indices = resolve_out_indices('ConvNeXt', out_indices, NUM_STAGES, 'stage', 'strides 4, 8, 16, 32')
        self.finish(out_indices, lambda i: dims[i], compile, norm_eps)

    def forward(self, x):
        self.check_input(x)
        # Every map stays channels_last (NHWC in memory; convs keep their input's layout): the permutes around
        # the norms and Linears become free views, and the 7x7 depthwise conv runs faster, its backward on the
        # CPU far faster (docs/benchmarks.md).
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i in range(NUM_STAGES):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(self.output(i, x))
        return tuple(outs)

    @property
    def out_strides(self):
        """The stride of each output, in the order of ``out_indices`` (4, 8, 16, 32 at ``output_stride=32``)."""
        return [self.stage_strides[i] for i in self.out_indices]

    def frozen_modules(self):
        return [module for i in range(self.frozen_stages) for module in (
            self.downsample_layers[i], self.stages[i], *([getattr(self, f'norm{i}')] if i in self.out_indices else []))]

    # ---- loading (StrictLoading): what the weights are, what the config builds
    def arch_args(self):
        return dict(arch=dict(depths=self.depths, dims=self.dims), use_grn=self.use_grn,
                    layer_scale_init_value=1e-6 if self.stages[0][0].gamma is not None else 0)

    def arch_name(self, args=None):
        """'ConvNeXt-tiny', 'ConvNeXt V2-atto' or the depths and dims of a custom arch (``args``: constructor
        arguments as :meth:`arch_args` gives them; default this backbone's): for messages."""
        args = args or self.arch_args()
        arch, version = args['arch'], ' V2' if args['use_grn'] else ''
        preset = next((name for name, setting in ARCH_SETTINGS.items() if setting == arch), None)
        name = f'ConvNeXt{version}-{preset}' if preset else (
            f'ConvNeXt{version} with depths={arch["depths"]}, dims={arch["dims"]}')
        return name + (', without layer scale' if not (args['use_grn'] or args['layer_scale_init_value']) else '')

    # ---- layer decay (get_layer_depth): the official rules on the official names
    def default_decay_layers(self):
        """mmpretrain's num_layers: 12 where stage 2 is deeper than 9 blocks (small and larger), else 6."""
        return max(12 if self.depths[2] > 9 else 6, self.decay_layers_needed('layer_wise'))

    def decay_layers_needed(self, decay_type):
        """The smallest num_layers that keeps layer ids strictly rising from the stem to the head."""
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'unknown decay_type {decay_type!r}; choose one of {list(DECAY_TYPES)}')
        if decay_type == 'layer_wise':
            # Stage 3 (id num_layers) must sit above the last stage-2 block, id 3 + (depth - 1) // 3.
            return 3 + (self.depths[2] - 1) // 3 + 1
        return 4  # stage 3's blocks (id 4) below everything else (id num_layers + 1)

    @staticmethod
    def layer_id(name, decay_type, num_layers):
        """``layer_wise``: stem 0; stage 0 blocks 1; stage 1 (downsample layer and blocks) 2; stage 2's downsample
        layer 3, its block b 3 + b // 3; stage 3 num_layers; output norms num_layers + 1. ``stage_wise``: stem and
        every downsample layer 0, stage s blocks s + 1, output norms num_layers + 1. (The official release's rules,
        which mmdet's and mmseg's LearningRateDecayOptimizerConstructor apply to these names too.)"""
        parts = name.split('.')
        if parts[0] == 'downsample_layers':
            return 0 if decay_type == 'stage_wise' else (0, 2, 3, num_layers)[int(parts[1])]
        if parts[0] == 'stages':
            stage, block = int(parts[1]), int(parts[2])
            return stage + 1 if decay_type == 'stage_wise' else (1, 2, 3 + block // 3, num_layers)[stage]
        return num_layers + 1  # norm0..norm3
