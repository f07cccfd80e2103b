"""The isotropic ConvNeXt ("A ConvNet for the 2020s", Section 3.3 / Appendix: "Isotropic ConvNeXt vs. ViT") as a
detection and segmentation backbone.

Data path, as the official ``models/convnext_isotropic.py``: image -> ``stem`` (a 16x16 stride-16 conv, no norm)
-> ``blocks.0..depth-1`` (ConvNeXt blocks, all at one width, no downsampling) -> one channels-first LayerNorm
``norm{i}`` per requested block, every output at stride 16. The classifier's ``norm`` and ``head`` are not built.
A plain, single-scale backbone like ViT's: detectors put :class:`convnext_mm.simple_fpn.SimpleFeaturePyramid`
(ViTDet's simple pyramid) after it, segmentors mmseg's ``MultiLevelNeck``.
"""
import torch
import torch.nn as nn
from mmengine.registry import MODELS

from . import checkpoint
from .blocks import (ConvNeXtBase, ConvNeXtBlock, check_frozen, drop_path_rates, is_positive_int, resolve_arch,
                     resolve_out_indices, run_block)

# The paper's isotropic models (official release: convnext_isotropic_{small,base,large}).
ISOTROPIC_ARCH_SETTINGS = {
    'small': dict(depth=18, dim=384),
    'base': dict(depth=18, dim=768),
    'large': dict(depth=36, dim=1024),
}
PATCH_SIZE = 16


@MODELS.register_module()
class ConvNeXtIsotropic(ConvNeXtBase):
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
        compile: as :class:`~convnext_mm.backbone.ConvNeXt`'s.
        init_cfg: mmengine init config. ``dict(type='Pretrained', checkpoint=PATH_OR_URL[, prefix=...])`` loads
            an official isotropic file (or one saved by convnext_mm), checking every key and shape
            (:mod:`convnext_mm.checkpoint`); the classifier (``norm``, ``head``) is left out.
        pretrained: the deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
    """
    arch_settings = ISOTROPIC_ARCH_SETTINGS
    own_names = staticmethod(checkpoint.isotropic_names)
    arch_of_weights = staticmethod(checkpoint.isotropic_arch_of_state_dict)
    min_input_size, input_size_reason = PATCH_SIZE, 'its patch size and stride'

    def __init__(self,
                 arch='small',
                 in_channels=3,
                 out_indices=(-1, ),
                 drop_path_rate=0.,
                 layer_scale_init_value=0.,
                 frozen_blocks=0,
                 with_cp=False,
                 compile=False,
                 init_cfg=None,
                 pretrained=None):
        super().__init__(in_channels, init_cfg, pretrained)
        arch = resolve_arch('ConvNeXtIsotropic', arch, ISOTROPIC_ARCH_SETTINGS, 'dict(depth=18, dim=384)')
        depth, dim = arch['depth'], arch['dim']
        if not (is_positive_int(depth) and is_positive_int(dim)):
            raise ValueError(f'ConvNeXtIsotropic: arch depth and dim must be positive integers, got depth={depth!r}, '
                             f'dim={dim!r}')
        if not layer_scale_init_value >= 0:
            raise ValueError(f'ConvNeXtIsotropic: layer_scale_init_value={layer_scale_init_value!r} must be >= 0 '
                             '(0: no layer scale, as the official S and B; 1e-6 as the official L)')
        self.depth, self.dim, self.with_cp = depth, dim, with_cp
        self.frozen_blocks = check_frozen('ConvNeXtIsotropic', 'frozen_blocks', frozen_blocks, depth,
                                          'k freezes the stem and blocks 0..k-1')
        rates = drop_path_rates('ConvNeXtIsotropic', drop_path_rate, depth)

        self.stem = nn.Conv2d(in_channels, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, rates[i], layer_scale_init_value) for i in range(depth)])
        out_indices = resolve_out_indices('ConvNeXtIsotropic', out_indices, depth, 'block',
                                          'block indices, every output at stride 16')
        self.finish(out_indices, lambda i: dim, compile)

    @property
    def out_strides(self):
        """The stride of each output: the patch size, for every block."""
        return [PATCH_SIZE] * len(self.out_indices)

    def forward(self, x):
        self.check_input(x)
        # channels_last throughout, as ConvNeXt: the blocks' permutes become free views.
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        outs = []
        for i in range(self.out_indices[-1] + 1):  # blocks after the last output would only cost time
            x = run_block(self.blocks[i], x, self.with_cp)
            if i in self.out_indices:
                outs.append(self.output(i, x))
        return tuple(outs)

    def frozen_modules(self):
        if self.frozen_blocks == 0:
            return []
        return [self.stem, *list(self.blocks)[:self.frozen_blocks],
                *(getattr(self, f'norm{i}') for i in self.out_indices if i < self.frozen_blocks)]

    # ---- loading (StrictLoading): what the weights are, what the config builds
    def arch_args(self):
        return dict(arch=dict(depth=self.depth, dim=self.dim),
                    layer_scale_init_value=1e-6 if self.blocks[0].gamma is not None else 0)

    def arch_name(self, args=None):
        """'ConvNeXt-small (iso.), without layer scale' or the depth and width of a custom arch (``args``:
        constructor arguments as :meth:`arch_args` gives them; default this backbone's): for messages."""
        args = args or self.arch_args()
        arch = args['arch']
        preset = next((name for name, setting in ISOTROPIC_ARCH_SETTINGS.items() if setting == arch), None)
        name = (f'ConvNeXt-{preset} (iso.)' if preset else
                f'an isotropic ConvNeXt of {arch["depth"]} blocks x {arch["dim"]}')
        return name + (', with' if args['layer_scale_init_value'] else ', without') + ' layer scale'

    # ---- layer decay (get_layer_depth): BEiT's / ViT's rule, which the official release has no own code for
    def default_decay_layers(self):
        return self.depth

    def decay_layers_needed(self, decay_type):
        """Its last block (id ``depth``) below the rest; layer_wise only (one stage of blocks)."""
        if decay_type != 'layer_wise':
            raise ValueError(f"decay_type={decay_type!r} has no meaning for ConvNeXtIsotropic (one stage of "
                             "blocks); use decay_type='layer_wise'")
        return self.depth

    @staticmethod
    def layer_id(name, decay_type, num_layers):
        """stem 0, block N -> N + 1, output norms num_layers + 1."""
        parts = name.split('.')
        if parts[0] == 'stem':
            return 0
        if parts[0] == 'blocks':
            return int(parts[1]) + 1
        return num_layers + 1
