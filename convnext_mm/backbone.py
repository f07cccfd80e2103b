"""The ConvNeXt backbone for mmdet and mmseg ("A ConvNet for the 2020s", Liu et al., CVPR 2022).

Data path: image -> stem (``downsample_layers.0``: 4x4 stride-4 conv, LayerNorm) -> four stages of blocks, stages
1-3 each after a downsample layer (``downsample_layers.1..3``: LayerNorm, 2x2 stride-2 conv) -> one channels-first
LayerNorm ``norm{i}`` per requested output, at strides 4, 8, 16, 32.
The un-normalized map goes on to the next stage. ``use_grn=True`` gives ConvNeXt V2 blocks.
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from mmcv.cnn.bricks import DropPath
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import PretrainedInit
from mmengine.registry import MODELS

from .checkpoint import CheckpointError, StrictLoading, arch_of_state_dict, load_pretrained, to_backbone_names
from . import cpu_fast_path

# Depths and widths from the ConvNeXt (V1) and ConvNeXt V2 papers.
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
}
NUM_STAGES = 4
TOTAL_STRIDE = 32
NORM_EPS = 1e-6


@MODELS.register_module(name='ConvNeXtLayerNorm2d')
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor ("channels-first" in the paper's code)."""

    def forward(self, x):
        # Normalizing the last dim of the NHWC view is exact and lets PyTorch use its fused kernel. The backbone
        # keeps its maps channels_last, so both permutes are free views.
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
    """7x7 depthwise conv, LayerNorm, Linear to 4C, GELU, [GRN], Linear to C, [layer scale], drop path, residual."""

    def __init__(self, dim, drop_path=0., layer_scale_init_value=1e-6, use_grn=False):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
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
        # NCHW -> NHWC for the norm and Linears: a free view, as the backbone keeps its maps channels_last.
        x = self.dwconv(x).permute(0, 2, 3, 1)
        if cpu_fast_path.applies(self, x):  # CPU inference: the same arithmetic in oneDNN, in cache-sized chunks
            return cpu_fast_path.pointwise(self, x, shortcut)
        x = self.norm(x)
        if cpu_fast_path.trains(self, x):  # CPU training: both Linears and their gradients in oneDNN
            x = cpu_fast_path.mlp(self, x)
        else:
            x = self.act(self.pwconv1(x))
            if self.grn is not None:
                x = self.grn(x)
            x = self.pwconv2(x)
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class ConvNeXtStage(nn.Sequential):
    """The blocks of one stage (``stages.S.B``, as in the official code), each under gradient checkpointing
    when ``with_cp`` is set and gradients are on."""

    def __init__(self, blocks, with_cp=False):
        super().__init__(*blocks)
        self.with_cp = with_cp

    def forward(self, x):
        for block in self:
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def stem_layer(in_channels, dim):
    """``downsample_layers.0``: a 4x4 stride-4 conv ("patchify"), then a LayerNorm."""
    return nn.Sequential(nn.Conv2d(in_channels, dim, kernel_size=4, stride=4), LayerNorm2d(dim, eps=NORM_EPS))


def downsample_layer(in_dim, dim):
    """``downsample_layers.1..3``: a LayerNorm, then a 2x2 stride-2 conv."""
    return nn.Sequential(LayerNorm2d(in_dim, eps=NORM_EPS), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))


def arch_preset(depths, dims):
    """The preset name of ``depths`` and ``dims`` ('tiny', ...), or None for a custom arch."""
    for name, settings in ARCH_SETTINGS.items():
        if settings == dict(depths=list(depths), dims=list(dims)):
            return name
    return None


def resolve_arch(arch):
    """``arch`` preset name or ``dict(depths=[4 ints], dims=[4 ints])`` -> (depths, dims)."""
    if isinstance(arch, str):
        if arch not in ARCH_SETTINGS:
            raise ValueError(f'ConvNeXt: unknown arch {arch!r}; choose one of {sorted(ARCH_SETTINGS)} '
                             "or pass dict(depths=[...], dims=[...]) with 4 entries each")
        arch = ARCH_SETTINGS[arch]
    if not isinstance(arch, dict) or set(arch) != {'depths', 'dims'}:
        raise ValueError(f'ConvNeXt: arch must be a preset name or a dict with exactly the keys depths and dims, '
                         f'got {arch!r}')
    depths, dims = list(arch['depths']), list(arch['dims'])
    if len(depths) != NUM_STAGES or len(dims) != NUM_STAGES or not all(
            isinstance(v, int) and v > 0 for v in depths + dims):
        raise ValueError(f'ConvNeXt: arch depths and dims need {NUM_STAGES} positive integers each, '
                         f'got depths={depths}, dims={dims}')
    return depths, dims


def resolve_out_indices(out_indices):
    """Any subset of 0..3 (negatives count from the end) -> sorted tuple of stage indices."""
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    resolved = []
    for index in out_indices:
        if not isinstance(index, int) or not -NUM_STAGES <= index < NUM_STAGES:
            raise ValueError(f'ConvNeXt: out_indices entry {index!r} is out of range; allowed are 0..3 '
                             'or -4..-1 (strides 4, 8, 16, 32)')
        resolved.append(index % NUM_STAGES)
    if not resolved or len(set(resolved)) != len(resolved):
        raise ValueError(f'ConvNeXt: out_indices must name distinct stages, at least one, got {out_indices!r}')
    return tuple(sorted(resolved))


# mmpretrain's ConvNeXt arguments (a config written for ``type='mmpretrain.ConvNeXt'`` passes them): the values
# that build the paper's detection backbone, which is what this class is. Any other value is refused by name.
MMPRETRAIN_PAPER_VALUES = dict(
    gap_before_final_norm=False,  # True pools stage 3 to a vector, a classifier's input: no maps for a neck
    linear_pw_conv=(True, False),  # a Linear or a 1x1 conv: the same function (1x1-conv files are reshaped)
    norm_cfg=dict(type='LN2d', eps=NORM_EPS),
    act_cfg=dict(type='GELU'),
    stem_patch_size=4,  # the stride-4 first map that the necks' strides assume
)
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location')


def check_mmpretrain_args(values):
    """Accept the arguments of mmpretrain's ConvNeXt (``values``) with the values that build the paper's detection
    backbone; refuse any other value, and any other argument, by name and with what to write."""
    for name, value in values.items():
        if name not in MMPRETRAIN_PAPER_VALUES:
            raise TypeError(f'ConvNeXt got an unknown argument {name!r}; its arguments are arch, in_channels, '
                            'out_indices, drop_path_rate, layer_scale_init_value, frozen_stages, with_cp, use_grn, '
                            'compile, init_cfg, pretrained, and mmpretrain\'s '
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


def split_init_cfg(init_cfg, pretrained=None):
    """``(pretrained_cfg, init_cfg)`` from mmengine's ``init_cfg`` (a dict or a list of dicts) and the old-style
    ``pretrained=PATH`` argument: the one ``Pretrained`` entry, which :func:`load_pretrained` loads (checking
    every key), and ``init_cfg`` with the ``Pretrained`` entry removed (for mmengine's initializers: theirs
    would load the file with ``strict=False``, skipping every key that does not match with only a warning)."""
    entries = [] if init_cfg is None else [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
    if not all(isinstance(entry, dict) and 'type' in entry for entry in entries):
        raise ValueError(f'ConvNeXt: init_cfg must be a dict or a list of dicts with a type, got {init_cfg!r}')
    pretrained_cfgs = [entry for entry in entries if entry['type'] in ('Pretrained', PretrainedInit)]
    others = [entry for entry in entries if entry not in pretrained_cfgs]
    if pretrained is not None:
        if pretrained_cfgs:
            raise ValueError(f'ConvNeXt: weights given twice, as pretrained={pretrained!r} and in init_cfg; '
                             "keep init_cfg=dict(type='Pretrained', checkpoint=...) only")
        warnings.warn('ConvNeXt: pretrained= is deprecated, as in mmdet and mmseg; use '
                      "init_cfg=dict(type='Pretrained', checkpoint=...)", DeprecationWarning)
        pretrained_cfgs = [dict(type='Pretrained', checkpoint=pretrained)]
    if len(pretrained_cfgs) > 1:
        raise ValueError(f'ConvNeXt: init_cfg has {len(pretrained_cfgs)} Pretrained entries; keep one')
    if not pretrained_cfgs:
        return None, init_cfg
    pretrained_cfg = pretrained_cfgs[0]
    unknown = sorted(set(pretrained_cfg) - set(PRETRAINED_KEYS))
    if unknown:
        raise ValueError(f'ConvNeXt: init_cfg of type Pretrained has unsupported keys {unknown}; supported are '
                         f'{list(PRETRAINED_KEYS)}')
    if not pretrained_cfg.get('checkpoint'):
        raise ValueError("ConvNeXt: init_cfg of type 'Pretrained' needs checkpoint=PATH_OR_URL")
    return pretrained_cfg, others or None


@MODELS.register_module()
class ConvNeXt(StrictLoading, BaseModule):
    """ConvNeXt backbone emitting one LayerNorm-ed feature map per index in ``out_indices``.

    The module tree and parameter names are the official release's: ``downsample_layers.0`` (the stem) and
    ``downsample_layers.1..3``, ``stages.S.B.{dwconv,norm,pwconv1,pwconv2,gamma,grn}``, ``norm0..3``. So official
    files load as they are, and mmdet's and mmseg's own ``LearningRateDecayOptimizerConstructor`` give every
    parameter the official layer id.

    Args:
        arch: a preset (atto, femto, pico, nano, tiny, small, base, large, xlarge, huge) or
            ``dict(depths=[...], dims=[...])``.
        in_channels: channels of the input image.
        out_indices: stages whose outputs are returned (strides 4, 8, 16, 32 for 0..3).
        drop_path_rate: stochastic depth rate, rising linearly from 0 over all blocks to this value.
        layer_scale_init_value: initial layer scale; 0 disables layer scale. Ignored with ``use_grn``.
        frozen_stages: k freezes stages 0..k-1 (downsample layer, blocks and output norm of each):
            no gradient, eval mode after ``train()``. 0 (or -1, mmdet's convention) freezes nothing.
        with_cp: non-reentrant gradient checkpointing of each block, to save memory in training.
        use_grn: ConvNeXt V2 blocks (global response normalization after GELU, no layer scale).
        compile: ``torch.compile`` the backbone's forward, as one graph with static shapes (torch 2.13's inductor
            fails on dynamic channels_last shapes): each new input size compiles anew, for minutes on a CPU, and
            after torch._dynamo's recompile limit the backbone runs eagerly. A dict gives torch.compile's
            arguments (e.g. ``dict(mode='max-autotune')``). Not faster on a CPU: docs/benchmarks.md. This, not
            mmengine's ``compile`` config key, is the way to compile: mmengine compiles the whole ``train_step``,
            which torch 2.13's dynamo fails on for mmdet's detectors (InternalTorchDynamoError at the first step).
        init_cfg: mmengine init config, a dict or a list of dicts. ``dict(type='Pretrained',
            checkpoint=PATH_OR_URL[, prefix='backbone.'])`` loads the official, timm, mmpretrain, ConvNeXt V2
            (also FCMAE) or convnext_mm checkpoint layouts, checking every key (:func:`load_pretrained`).
        pretrained: the deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``
            (mmseg's ``EncoderDecoder(pretrained=...)`` passes it).
        mmpretrain_args: mmpretrain's ConvNeXt arguments (gap_before_final_norm, linear_pw_conv, norm_cfg, act_cfg,
            stem_patch_size), accepted so that its configs need no other edit; the values that build the paper's
            backbone only (``MMPRETRAIN_PAPER_VALUES``), anything else is an error that says what to write.
    """

    def __init__(self,
                 arch='tiny',
                 in_channels=3,
                 out_indices=(0, 1, 2, 3),
                 drop_path_rate=0.,
                 layer_scale_init_value=1e-6,
                 frozen_stages=0,
                 with_cp=False,
                 use_grn=False,
                 compile=False,
                 init_cfg=None,
                 pretrained=None,
                 **mmpretrain_args):
        check_mmpretrain_args(mmpretrain_args)
        self.pretrained_cfg, init_cfg = split_init_cfg(init_cfg, pretrained)
        if init_cfg is None and self.pretrained_cfg is None:
            init_cfg = [dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.)]
        super().__init__(init_cfg=init_cfg)
        depths, dims = resolve_arch(arch)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f'ConvNeXt: frozen_stages={frozen_stages!r} is out of range; allowed are 0..4 '
                             '(k freezes stages 0..k-1; -1 also means none)')
        if not isinstance(compile, (bool, dict)):
            raise ValueError(f'ConvNeXt: compile={compile!r} must be True, False or a dict of torch.compile '
                             "arguments, e.g. dict(mode='max-autotune')")
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'ConvNeXt: drop_path_rate={drop_path_rate!r} must be in [0, 1)')
        self.depths, self.dims = depths, dims
        self.in_channels = in_channels
        self.use_grn = use_grn
        self.out_indices = resolve_out_indices(out_indices)
        self.frozen_stages = max(frozen_stages, 0)

        self.downsample_layers = nn.ModuleList([stem_layer(in_channels, dims[0])] + [
            downsample_layer(dims[i - 1], dims[i]) for i in range(1, NUM_STAGES)])
        drop_path_rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(NUM_STAGES):
            first_block = sum(depths[:i])
            self.stages.append(ConvNeXtStage([
                ConvNeXtBlock(dims[i], drop_path_rates[first_block + j], layer_scale_init_value, use_grn)
                for j in range(depths[i])], with_cp=with_cp))
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(dims[i], eps=NORM_EPS))
        self._freeze_stages()
        if compile:
            # Module.compile keeps the module tree and parameter names (checkpoints, layer decay) as they are.
            self.compile(**{'dynamic': False, **(compile if isinstance(compile, dict) else {})})

    def init_weights(self):
        # mmengine's order: the other initializers, then the file; the file through load_pretrained, which checks
        # every key, where mmengine's PretrainedInit would skip mismatched keys with a warning.
        super().init_weights()
        if self.pretrained_cfg is not None:
            load_pretrained(self, self.pretrained_cfg['checkpoint'], prefix=self.pretrained_cfg.get('prefix'),
                            logger=MMLogger.get_current_instance())

    # Loading (StrictLoading): every public layout's names become the official ones, all or nothing.
    own_names = staticmethod(to_backbone_names)

    def describe_misfit(self, converted, missing, unexpected, reshaped):
        """What the weights hold against what the config builds, and what to write."""
        problems = self.misfit_problems(converted, missing, unexpected, reshaped)
        try:
            found = arch_of_state_dict(converted)
        except CheckpointError as error:
            return f'they are no whole ConvNeXt: they {error}. {problems}'
        depths, dims = found['arch']['depths'], found['arch']['dims']
        name = arch_preset(depths, dims)
        differences = [f'stage {s + 1} (stages.{s}) has {depths[s]} blocks of {dims[s]} channels there, '
                       f'{self.depths[s]} of {self.dims[s]} here'
                       for s in range(NUM_STAGES) if (depths[s], dims[s]) != (self.depths[s], self.dims[s])]
        write = [f"arch='{name}'" if name else f'arch=dict(depths={depths}, dims={dims})'] if differences else []
        if found['use_grn'] != self.use_grn:
            differences.append(f'ConvNeXt {"V2 (GRN)" if found["use_grn"] else "V1"} blocks there, '
                               f'{"V2 (GRN)" if self.use_grn else "V1"} here')
            write.append(f'use_grn={found["use_grn"]}')
        has_layer_scale = self.stages[0][0].gamma is not None
        if bool(found['layer_scale_init_value']) != has_layer_scale and not self.use_grn:
            differences.append(f'layer scale {"in" if found["layer_scale_init_value"] else "not in"} the weights, '
                               f'{"in" if has_layer_scale else "not in"} this backbone')
            write.append(f'layer_scale_init_value={1.0 if found["layer_scale_init_value"] else 0}')
        file_arch = (f'ConvNeXt{" V2" if found["use_grn"] else ""}-{name}' if name else
                     f'ConvNeXt{" V2" if found["use_grn"] else ""} with depths={depths}, dims={dims}')
        advice = (f'Write {", ".join(write)} in the config\'s model.backbone, or give weights of the backbone it '
                  'builds' if write else 'Give weights of the backbone the config builds')
        return (f'they are {file_arch}, the config builds {self.arch_name()}'
                + (f' ({"; ".join(differences)})' if differences else '') + f'. {advice}. {problems}')

    @property
    def out_channels(self):
        """The width of each output, in the order of ``out_indices``."""
        return [self.dims[i] for i in self.out_indices]

    def arch_name(self):
        """'ConvNeXt-tiny', 'ConvNeXt V2-atto' or the depths and dims of a custom arch: for messages."""
        name = arch_preset(self.depths, self.dims)
        version = ' V2' if self.use_grn else ''
        return f'ConvNeXt{version}-{name}' if name else f'ConvNeXt{version} with depths={self.depths}, dims={self.dims}'


    def forward(self, x):
        self._check_input(x)
        # Every map stays channels_last (NHWC in memory; convs keep their input's layout): the permutes around
        # the norms and Linears become free views, and the 7x7 depthwise conv runs faster, its backward on the
        # CPU far faster (docs/benchmarks.md).
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i in range(NUM_STAGES):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                # Necks, heads and mmcv ops expect plain NCHW; this copy is small next to a stage.
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
        return tuple(outs)

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self):
        frozen = []
        for i in range(self.frozen_stages):
            frozen += [self.downsample_layers[i], self.stages[i]]
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        freeze(frozen)

    def _check_input(self, x):
        check_image(x, 'ConvNeXt', self.in_channels, TOTAL_STRIDE, 'its total stride')


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
