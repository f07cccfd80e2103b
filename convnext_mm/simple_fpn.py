"""ViTDet's simple feature pyramid ("Exploring Plain Vision Transformer Backbones for Object Detection", Li et al.,
ECCV 2022) for a plain, single-scale backbone such as :class:`convnext_mm.isotropic.ConvNeXtIsotropic`.

From the last stride-16 map of width C: scale 4 (stride 4) by two 2x2 stride-2 transposed convs to C/2 then C/4,
with a LayerNorm and GELU between; scale 2 (stride 8) by one transposed conv to C/2; scale 1 (stride 16) as it is;
scale 1/2 (stride 32) by a 2x2 max pool. Each level then a 1x1 conv + norm and a 3x3 conv + norm to
``out_channels``, and extra levels for the RPN by a stride-2 subsampling of the last output (detectron2's
``LastLevelMaxPool``: max pool with kernel 1, stride 2): strides 4, 8, 16, 32, 64 for ``num_outs=5``.

The layout and arguments follow mmdet 3.x's ``projects/ViTDet`` ``SimpleFPN`` (``backbone_channel``,
``in_channels=[C/4, C/2, C, C]``, ``out_channels``, ``num_outs``, ``norm_cfg``), whose module names
(``fpn1..fpn4``, ``lateral_convs``, ``fpn_convs``) this keeps. Its norms are ViTDet's channels-first LayerNorm,
registered as ``ConvNeXtLayerNorm2d`` (ViTDet's configs call theirs ``LN2d``: that name stays free for them), which
the heads' configs use too.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from .backbone import NORM_EPS

DEFAULT_NORM_CFG = dict(type='ConvNeXtLayerNorm2d', eps=NORM_EPS)


def norm_layer(norm_cfg, channels):
    return build_norm_layer(norm_cfg, channels)[1]


def conv_norm(in_channels, out_channels, kernel_size, norm_cfg):
    """A conv without bias (the norm has one), then the norm: detectron2's ``Conv2d(bias=not norm, norm=...)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_cfg is None),
        norm_layer(norm_cfg, out_channels) if norm_cfg is not None else nn.Identity())


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple feature pyramid from one stride-16 map (see the module doc).

    Args:
        backbone_channel: C, the width of the backbone's map.
        in_channels: the widths of the four levels before their convs; ViTDet's ``[C/4, C/2, C, C]``, the only
            value this layout builds (kept as an argument for mmdet's SimpleFPN configs).
        out_channels: width of every output (256 in ViTDet).
        num_outs: outputs; 4 (strides 4..32) or more (each extra one subsamples the last by 2: 5 gives the RPN's
            stride 64 level).
        norm_cfg: the norm after each transposed conv of the 4x branch and after each output conv; ViTDet's
            LayerNorm by default. None: no norms (convs with bias).
        init_cfg: mmengine init config; default: mmengine's default (kaiming-uniform) convs, as mmdet's SimpleFPN.
    """

    def __init__(self, backbone_channel, in_channels=None, out_channels=256, num_outs=5,
                 norm_cfg=DEFAULT_NORM_CFG, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if isinstance(backbone_channel, bool) or not isinstance(backbone_channel, int) or backbone_channel < 4 \
                or backbone_channel % 4:
            raise ValueError(f'SimpleFeaturePyramid: backbone_channel={backbone_channel!r} must be a positive '
                             'multiple of 4 (the 4x level has backbone_channel // 4 channels): the backbone\'s width')
        levels = [backbone_channel // 4, backbone_channel // 2, backbone_channel, backbone_channel]
        if in_channels is None:
            in_channels = levels
        if list(in_channels) != levels:
            raise ValueError(f'SimpleFeaturePyramid: in_channels={list(in_channels)} does not match '
                             f'backbone_channel={backbone_channel}, whose levels have {levels} channels; write '
                             f'in_channels={levels} or leave it out')
        if isinstance(num_outs, bool) or not isinstance(num_outs, int) or num_outs < len(levels):
            raise ValueError(f'SimpleFeaturePyramid: num_outs={num_outs!r} must be an int >= 4 (strides 4, 8, 16, '
                             '32; 5 adds the RPN\'s stride-64 level)')
        self.backbone_channel = backbone_channel
        self.in_channels = levels
        self.out_channels = out_channels
        self.num_outs = num_outs
        half, quarter = backbone_channel // 2, backbone_channel // 4
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(backbone_channel, half, 2, stride=2),
            norm_layer(norm_cfg, half) if norm_cfg is not None else nn.Identity(),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, stride=2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(backbone_channel, half, 2, stride=2))
        self.fpn3 = nn.Sequential(nn.Identity())
        self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
        self.lateral_convs = nn.ModuleList([conv_norm(c, out_channels, 1, norm_cfg) for c in levels])
        self.fpn_convs = nn.ModuleList([conv_norm(out_channels, out_channels, 3, norm_cfg) for _ in levels])

    def forward(self, inputs):
        """``inputs``: the backbone's map, or a sequence whose last entry is it (a backbone's tuple of outputs)."""
        x = inputs if torch.is_tensor(inputs) else inputs[-1]
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != self.backbone_channel:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f'SimpleFeaturePyramid expects the backbone\'s NCHW map with backbone_channel='
                             f'{self.backbone_channel} channels, got {shape}; set backbone_channel to the '
                             'backbone\'s width')
        levels = [self.fpn1(x), self.fpn2(x), self.fpn3(x), self.fpn4(x)]
        outs = [conv(lateral(level)) for level, lateral, conv in zip(levels, self.lateral_convs, self.fpn_convs)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
