"""The paper's ConvNeXt, the one reference formulation that the tests and tools/benchmark_backbone.py hold ours
against: a plain PyTorch transcription of the official code (facebookresearch/ConvNeXt
object_detection/mmdet/models/backbones/convnext.py, and ConvNeXt-V2 models/convnextv2.py and models/utils.py
for GRN), written from that code and not from this package's, which it never imports.

Kept as the official code has it: NCHW maps with a permute to NHWC and back around each block's norm and Linears;
the channels-first LayerNorm written out as mean, variance, divide; the official parameter names, which are also
ours (GRN's gamma and beta shaped (1, 1, 1, C) as V2 has them: :func:`load_weights` reshapes ours into them).
Not transcribed: drop path (the comparisons run without it) and the official init (weights come from ours).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm(nn.Module):
    """The official LayerNorm: ``channels_last`` by F.layer_norm, ``channels_first`` (NCHW) written out."""

    def __init__(self, normalized_shape, eps=1e-6, data_format='channels_last'):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape, )

    def forward(self, x):
        if self.data_format == 'channels_last':
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """ConvNeXt V2's global response normalization, on NHWC input."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        Gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        Nx = Gx / (Gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * Nx) + self.beta + x


def grn(x, gamma, beta):
    """GRN as a function of ``x`` (NHWC) and parameters of any shape broadcasting over C."""
    Gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    Nx = Gx / (Gx.mean(dim=-1, keepdim=True) + 1e-6)
    return gamma * (x * Nx) + beta + x


class Block(nn.Module):
    """V1: dwconv, LayerNorm, Linear 4C, GELU, Linear C, layer scale; V2 (``use_grn``): GRN after GELU and no
    layer scale."""

    def __init__(self, dim, layer_scale_init_value=1e-6, use_grn=False):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim) if use_grn else None
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones((dim)), requires_grad=True)
                      if layer_scale_init_value > 0 and not use_grn else None)

    def forward(self, x):
        input = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        if self.grn is not None:
            x = self.grn(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return input + x


class ConvNeXt(nn.Module):
    """The official detection backbone with all four outputs (``norm0..3``)."""

    def __init__(self, depths, dims, in_chans=3, layer_scale_init_value=1e-6, use_grn=False):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                                                    LayerNorm(dims[0], eps=1e-6, data_format='channels_first')))
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm(dims[i], eps=1e-6, data_format='channels_first'),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(dims[i], layer_scale_init_value, use_grn) for _ in range(depths[i])])
            for i in range(4))
        for i in range(4):
            self.add_module(f'norm{i}', LayerNorm(dims[i], eps=1e-6, data_format='channels_first'))

    def forward(self, x):
        outs = []
        for i in range(4):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x)
            outs.append(getattr(self, f'norm{i}')(x))
        return tuple(outs)


def load_weights(model, state_dict):
    """``model`` holding ``state_dict`` (ours: the same names), each tensor reshaped to the reference's shape."""
    own = model.state_dict()
    model.load_state_dict({name: value.reshape(own[name].shape) for name, value in state_dict.items()
                           if name in own}, strict=True)
    return model


def like(ours):
    """The reference of the same arch as ``ours`` (convnext_mm's ConvNeXt with all four outputs), holding its
    weights."""
    gamma = any(name.endswith('.gamma') and 'grn' not in name for name in ours.state_dict())
    model = ConvNeXt(ours.depths, ours.dims, in_chans=ours.in_channels, layer_scale_init_value=1e-6 if gamma else 0,
                     use_grn=ours.use_grn)
    return load_weights(model, ours.state_dict())
