"""The isotropic ConvNeXt backbone, ViTDet's simple feature pyramid and their configs.

The reference below transcribes the official release's models/convnext_isotropic.py (and the Block of
models/convnext.py; its LayerNorm is tests/reference.py's) in plain PyTorch; the backbone under test is checked
against it, not against itself.
"""
import math

import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

from convnext_mm import ConvNeXtIsotropic, SimpleFeaturePyramid
from convnext_mm.checkpoint import CheckpointError
import paper_figures
import reference
from project import config_path
import config_utils as runtime  # tools/config_utils.py, on sys.path through project
from config_utils import build_model, load_config
from tiny_models import tiny_detection_batch, tiny_segmentation_batch

# The paper's "Isotropic ConvNeXt vs. ViT" table (docs/results.md): arch -> (depth, width, params in M, GFLOPs at 224).
PAPER = paper_figures.isotropic_classifiers()
DETECTION_CONFIGS = ['mask_rcnn/convnext_iso_s_lsj_100e.py', 'mask_rcnn/convnext_iso_b_lsj_100e.py']
SEGMENTATION_CONFIGS = ['upernet/convnext_iso_s_512_160k_ade20k.py', 'upernet/convnext_iso_b_512_160k_ade20k.py']


# ---- The official isotropic ConvNeXt, transcribed ----

class RefBlock(nn.Module):
    def __init__(self, dim, layer_scale_init_value=0.):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = reference.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + x.permute(0, 3, 1, 2)


class RefConvNeXtIsotropic(nn.Module):
    def __init__(self, in_chans=3, num_classes=1000, depth=18, dim=384, layer_scale_init_value=0.):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=16, stride=16)
        self.blocks = nn.Sequential(*[RefBlock(dim, layer_scale_init_value) for _ in range(depth)])
        self.norm = reference.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def block_outputs(self, x):
        x = self.stem(x)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


def reference_model(depth, dim, layer_scale_init_value=0., seed=0):
    """The reference with random weights: built without initializing (fast at L's 306M), then every tensor drawn
    (gamma too, so that layer scale matters)."""
    with torch.device('meta'):
        model = RefConvNeXtIsotropic(depth=depth, dim=dim, layer_scale_init_value=layer_scale_init_value)
    model = model.to_empty(device='cpu').eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith('norm.weight') or name.endswith('.gamma'):
                param.uniform_(0.5, 1.5, generator=generator)
            else:
                param.normal_(0., 0.02, generator=generator)
    return model


def channels_first_norm(x, norm):
    """The backbone's output norm, applied as the official channels_first LayerNorm."""
    ref = reference.LayerNorm(x.shape[1], data_format='channels_first')
    ref.load_state_dict(norm.state_dict())
    return ref(x)


def randomize_output_norms(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in model.out_indices:
            norm = getattr(model, f'norm{i}')
            norm.weight.uniform_(0.5, 1.5, generator=generator)
            norm.bias.normal_(0., 0.1, generator=generator)


# ---- Backbone ----

def test_outputs_equal_the_reference_at_every_requested_block():
    torch.manual_seed(0)
    ref = reference_model(depth=5, dim=32, layer_scale_init_value=1e-6)
    model = ConvNeXtIsotropic(arch=dict(depth=5, dim=32), out_indices=(1, -3, -1), layer_scale_init_value=1e-6)
    model.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith(('norm.', 'head.'))},
                          strict=False)
    randomize_output_norms(model)
    assert model.out_indices == (1, 2, 4)
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        expected = [channels_first_norm(ref.block_outputs(x)[i], getattr(model, f'norm{i}')) for i in (1, 2, 4)]
        for mode in (model.eval(), model.train()):  # inference fast path and the training path
            outs = mode(x)
            assert [tuple(o.shape) for o in outs] == [(2, 32, 5, 7)] * 3  # stride 16
            for out, exp in zip(outs, expected):
                torch.testing.assert_close(out, exp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('arch', ['small', 'base', 'large'])
def test_official_file_loads_exactly_and_gives_the_reference_outputs(arch, tmp_path):
    depth, dim = PAPER[arch][:2]
    layer_scale = 1e-6 if arch == 'large' else 0.  # the official L has gamma, S and B have none
    ref = reference_model(depth, dim, layer_scale)
    state_dict = ref.state_dict()
    assert any(k.endswith('.gamma') for k in state_dict) == (arch == 'large')
    path = tmp_path / f'convnext_iso_{arch}_1k_224_ema.pth'
    torch.save({'model': state_dict}, path)
    model = ConvNeXtIsotropic(arch=arch, layer_scale_init_value=layer_scale,
                              init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    backbone_keys = {k for k in state_dict if not k.startswith(('norm.', 'head.'))}
    loaded = model.state_dict()
    assert backbone_keys == {k for k in loaded if not k.startswith(f'norm{depth - 1}.')}
    for key in backbone_keys:
        assert torch.equal(loaded[key], state_dict[key]), key
    del state_dict, loaded
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = channels_first_norm(ref.block_outputs(x)[-1], getattr(model, f'norm{depth - 1}'))
        torch.testing.assert_close(model.eval()(x)[0], expected, rtol=1e-4, atol=1e-4)


def save_reference(tmp_path, name, depth, dim, layer_scale=0.):
    path = tmp_path / name
    torch.save({'model': reference_model(depth, dim, layer_scale).state_dict()}, path)
    return str(path)


def test_a_file_of_another_size_or_layer_scale_is_refused_with_what_to_change(tmp_path):
    small = save_reference(tmp_path, 'small.pth', 4, 32)
    model = ConvNeXtIsotropic(arch=dict(depth=4, dim=48), init_cfg=dict(type='Pretrained', checkpoint=small))
    with pytest.raises(CheckpointError, match=r'do not fit .*they are an isotropic ConvNeXt of 4 blocks x 32.*the config builds an isotropic '
                                              r'ConvNeXt of 4 blocks x 48.*Write arch=dict\(depth=4, dim=32\).*shape mismatch: blocks\.0'):
        model.init_weights()
    deeper = ConvNeXtIsotropic(arch=dict(depth=5, dim=32), init_cfg=dict(type='Pretrained', checkpoint=small))
    with pytest.raises(CheckpointError, match=r'Write arch=dict\(depth=4, dim=32\).*missing from the weights: blocks\.4\.'):
        deeper.init_weights()
    with_gamma = save_reference(tmp_path, 'gamma.pth', 4, 32, layer_scale=1e-6)
    model = ConvNeXtIsotropic(arch=dict(depth=4, dim=32), init_cfg=dict(type='Pretrained', checkpoint=with_gamma))
    with pytest.raises(CheckpointError, match=r'Write layer_scale_init_value=1e-06.*not in this backbone: blocks\.0\.gamma'):
        model.init_weights()
    model = ConvNeXtIsotropic(arch=dict(depth=4, dim=32), layer_scale_init_value=1e-6,
                              init_cfg=dict(type='Pretrained', checkpoint=small))
    with pytest.raises(CheckpointError, match=r'Write layer_scale_init_value=0 .*missing from the weights: blocks\.0\.gamma'):
        model.init_weights()
    # A hierarchical ConvNeXt's file is named as such.
    torch.save({'model': {'downsample_layers.0.0.weight': torch.zeros(96, 3, 4, 4)}}, tmp_path / 'convnext.pth')
    model = ConvNeXtIsotropic(arch=dict(depth=4, dim=32),
                              init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'convnext.pth')))
    with pytest.raises(CheckpointError, match=r"hold no tensor of a ConvNeXtIsotropic backbone"):
        model.init_weights()
    with pytest.raises(CheckpointError, match='not found'):
        ConvNeXtIsotropic(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'absent.pth'))).init_weights()


def test_a_whole_detector_checkpoint_gives_its_backbone_and_output_norms(tmp_path):
    source = ConvNeXtIsotropic(arch=dict(depth=3, dim=32), out_indices=(0, 2))
    randomize_output_norms(source)
    whole = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    whole['neck.fpn1.0.weight'] = torch.zeros(1)
    torch.save({'state_dict': whole, 'meta': {}}, tmp_path / 'detector.pth')
    model = ConvNeXtIsotropic(arch=dict(depth=3, dim=32), out_indices=(2, ),
                              init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'detector.pth')))
    model.init_weights()  # norm0 of the file is not an output here: not an error
    torch.testing.assert_close(model.norm2.weight, source.norm2.weight)
    # An output norm is loaded as a whole or not at all.
    del whole['backbone.norm2.bias']
    torch.save({'state_dict': whole}, tmp_path / 'half_norm.pth')
    model = ConvNeXtIsotropic(arch=dict(depth=3, dim=32), out_indices=(2, ),
                              init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'half_norm.pth')))
    with pytest.raises(CheckpointError, match=r'missing from the weights: norm2\.bias'):
        model.init_weights()


def test_parameter_counts_match_the_paper():
    """The paper counts the classifier: stem, blocks, final norm and a 1000-class head."""
    for arch, (depth, dim, paper_millions, _) in PAPER.items():
        with torch.device('meta'):
            ref = RefConvNeXtIsotropic(depth=depth, dim=dim, layer_scale_init_value=1e-6 if arch == 'large' else 0)
            ours = ConvNeXtIsotropic(arch=arch, layer_scale_init_value=1e-6 if arch == 'large' else 0)
        ref_params = sum(p.numel() for p in ref.parameters())
        classifier = sum(p.numel() for p in [*ref.norm.parameters(), *ref.head.parameters()])
        assert round(ref_params / 1e6) == paper_millions, (arch, ref_params)
        # Ours: the same minus the classifier, plus one output norm (2 x dim).
        assert sum(p.numel() for p in ours.parameters()) == ref_params - classifier + 2 * dim


def test_small_flops_at_224_match_the_paper():
    from mmengine.analysis import get_model_complexity_info
    model = ConvNeXtIsotropic(arch='small').eval()
    with torch.no_grad():
        flops = get_model_complexity_info(model, inputs=(torch.randn(1, 3, 224, 224), ), show_table=False,
                                          show_arch=False)['flops']
    head = 384 * 1000  # the classifier's Linear, which the paper's count includes
    assert abs((flops + head) / 1e9 - PAPER['small'][3]) < 0.05, flops


def test_training_options():
    model = ConvNeXtIsotropic(arch=dict(depth=4, dim=16), out_indices=(1, 3), drop_path_rate=0.3, frozen_blocks=2)
    assert [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0. for b in model.blocks] == \
        pytest.approx([0., 0.1, 0.2, 0.3])
    model.train()
    frozen = [model.stem, model.blocks[0], model.blocks[1], model.norm1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for m in frozen)
    assert all(p.requires_grad for m in (model.blocks[2], model.blocks[3], model.norm3) for p in m.parameters())
    # Gradient checkpointing: the same outputs and gradients.
    torch.manual_seed(0)
    plain = ConvNeXtIsotropic(arch=dict(depth=3, dim=16), out_indices=(0, 2))
    checkpointed = ConvNeXtIsotropic(arch=dict(depth=3, dim=16), out_indices=(0, 2), with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 48, 48)
    for model in (plain, checkpointed):
        sum(o.square().sum() for o in model.train()(x)).backward()
    torch.testing.assert_close(plain.stem.weight.grad, checkpointed.stem.weight.grad)


@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='tiny'), r"unknown arch 'tiny'; choose one of \['base', 'large', 'small'\]"),
    (dict(arch=dict(depth=18)), 'exactly the keys depth and dim'),
    (dict(arch=dict(depth=0, dim=384)), 'positive integers'),
    (dict(out_indices=(18, )), r'out_indices entry 18 is out of range for 18 blocks; allowed are 0\.\.17 or -18\.\.-1'),
    (dict(out_indices=(-19, )), 'out_indices entry -19'),
    (dict(out_indices=(3, -15)), 'distinct blocks'),
    (dict(frozen_blocks=19), r'frozen_blocks=19 is out of range; allowed are 0\.\.18'),
    (dict(drop_path_rate=1.0), r'drop_path_rate=1.0 must be in \[0, 1\)'),
    (dict(layer_scale_init_value=-1), 'layer_scale_init_value=-1 must be >= 0'),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with torch.device('meta'), pytest.raises(ValueError, match=match):
        ConvNeXtIsotropic(**kwargs)


def test_bad_inputs_are_refused_with_the_fix():
    model = ConvNeXtIsotropic(arch=dict(depth=1, dim=16))
    with pytest.raises(ValueError, match=r'NCHW image tensor \(4 dims.*got \(3, 32, 32\)'):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r'in_channels=3 but the input has 1 channels.*set in_channels=1'):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r'at least 16x16 pixels.*got 15x64; resize or pad'):
        model(torch.zeros(1, 3, 15, 64))
    assert model(torch.zeros(1, 3, 16, 16))[0].shape == (1, 16, 1, 1)


# ---- Simple feature pyramid ----

def test_pyramid_strides_channels_and_vitdet_layout():
    backbone = ConvNeXtIsotropic(arch=dict(depth=2, dim=32))
    neck = SimpleFeaturePyramid(backbone_channel=32, out_channels=24, num_outs=5)
    assert neck.in_channels == [8, 16, 32, 32]
    # mmdet's ViTDet SimpleFPN module names and layers.
    assert [type(m).__name__ for m in neck.fpn1] == ['ConvTranspose2d', 'LayerNorm2d', 'GELU', 'ConvTranspose2d']
    assert [type(m).__name__ for m in neck.fpn2] == ['ConvTranspose2d']
    assert [type(m).__name__ for m in neck.fpn4] == ['MaxPool2d']
    assert [tuple(m[0].weight.shape) for m in neck.lateral_convs] == [(24, 8, 1, 1), (24, 16, 1, 1), (24, 32, 1, 1),
                                                                    (24, 32, 1, 1)]
    assert all(m[0].bias is None and type(m[1]).__name__ == 'LayerNorm2d' for m in neck.fpn_convs)
    image = torch.randn(1, 3, 128, 192)
    outs = neck(backbone(image))
    strides = [128 // o.shape[2] for o in outs]
    assert strides == [4, 8, 16, 32, 64] and [192 // o.shape[3] for o in outs] == strides
    assert all(o.shape[1] == 24 for o in outs)
    # The stride-64 level subsamples the last output (LastLevelMaxPool).
    torch.testing.assert_close(outs[4], outs[3][:, :, ::2, ::2])
    with pytest.raises(ValueError, match=r'in_channels=\[32, 32, 32, 32\] does not match backbone_channel=32.*'
                                         r'in_channels=\[8, 16, 32, 32\]'):
        SimpleFeaturePyramid(backbone_channel=32, in_channels=[32] * 4)
    with pytest.raises(ValueError, match='backbone_channel=16 channels, got'):
        SimpleFeaturePyramid(backbone_channel=16)(outs[:1])


# ---- Layer-wise lr decay ----

class TinyDetector(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Conv2d(16, 8, 1)


def decay_groups(model, constructor, paramwise_cfg):
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')  # the constructors are registered in mmdet's (and mmseg's) registry
    return build_optim_wrapper(model, dict(
        type='OptimWrapper', constructor=constructor, paramwise_cfg=paramwise_cfg,
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))).optimizer.param_groups


def test_layer_decay_ids_stem_zero_block_n_n_plus_one_rest_on_top():
    model = TinyDetector(ConvNeXtIsotropic(arch=dict(depth=3, dim=16), out_indices=(1, 2)))
    groups = decay_groups(model, 'ConvNeXtLayerDecayOptimizerConstructor', dict(decay_rate=0.5, num_layers=3))
    ids = {id(p): g['layer_id'] for g in groups for p in g['params']}
    scales = {g['layer_id']: g['lr_scale'] for g in groups}
    named = dict(model.named_parameters())
    assert ids[id(named['backbone.stem.weight'])] == 0
    for n in range(3):
        assert ids[id(named[f'backbone.blocks.{n}.pwconv1.weight'])] == n + 1
    for name in ('backbone.norm1.weight', 'backbone.norm2.bias', 'neck.weight'):
        assert ids[id(named[name])] == 4
    assert scales[0] == pytest.approx(0.5 ** 4) and scales[4] == 1.
    with pytest.raises(ValueError, match=r'ConvNeXtLayerDecayOptimizerConstructor: num_layers=2 is too small for '
                                         r'an isotropic ConvNeXt of 3 blocks x 16, without layer scale '
                                         r'\(depth=3, dim=16\): layer_wise needs num_layers >= 3'):
        decay_groups(model, 'ConvNeXtLayerDecayOptimizerConstructor', dict(decay_rate=0.5, num_layers=2))
    with pytest.raises(ValueError, match="decay_type='stage_wise' has no meaning for ConvNeXtIsotropic"):
        decay_groups(model, 'ConvNeXtLayerDecayOptimizerConstructor',
                     dict(decay_rate=0.5, num_layers=3, decay_type='stage_wise'))


def test_mmdet_own_decay_constructor_puts_the_whole_isotropic_backbone_on_top():
    """mmdet's LearningRateDecayOptimizerConstructor parses downsample_layers / stages only: ``stem`` and
    ``blocks`` fall to its "everything else", num_layers + 1, so it decays nothing in this backbone."""
    model = TinyDetector(ConvNeXtIsotropic(arch=dict(depth=3, dim=16)))
    groups = decay_groups(model, 'LearningRateDecayOptimizerConstructor', dict(decay_rate=0.5, num_layers=3))
    assert {g['lr_scale'] for g in groups} == {1.}


# ---- Configs ----

def shrink(cfg, depth, dim):
    """The config's model with a tiny random backbone (no file read), its neck and heads fitted to it."""
    backbone = cfg.model.backbone
    backbone.arch, backbone.init_cfg = dict(depth=depth, dim=dim), None
    cfg.optim_wrapper.paramwise_cfg.num_layers = depth
    if cfg.default_scope == 'mmdet':
        cfg.model.neck.backbone_channel = dim
        cfg.model.data_preprocessor.batch_augments[0].size = (64, 64)  # the config's 1024 pad, at the test's size
        cfg.model.train_cfg.rpn_proposal.max_per_img = 8
        cfg.model.test_cfg.rpn.max_per_img = 8
    else:
        backbone.out_indices = tuple(range(depth))
        cfg.model.neck.update(in_channels=[dim] * 4, out_channels=dim)
        cfg.model.decode_head.update(in_channels=[dim] * 4, channels=32)
        cfg.model.auxiliary_head.update(in_channels=dim, channels=16)
        cfg.model.data_preprocessor.size = (64, 64)


@pytest.mark.parametrize('name', DETECTION_CONFIGS + SEGMENTATION_CONFIGS)
def test_config_trains_a_step_on_the_cpu_with_gradients_reaching_the_stem(name, monkeypatch):
    monkeypatch.setattr(runtime, 'cuda_available', lambda: False)
    torch.manual_seed(0)
    cfg = load_config(config_path(name))
    assert cfg.model.backbone.type == 'ConvNeXtIsotropic'
    assert cfg.custom_imports == dict(imports=['convnext_mm'], allow_failed_imports=False)
    assert cfg.model.backbone.init_cfg.checkpoint.startswith('data/pretrained/convnext_iso_')
    assert cfg.optim_wrapper.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert cfg.optim_wrapper.paramwise_cfg.decay_type == 'layer_wise'
    assert cfg.optim_wrapper.paramwise_cfg.num_layers == 18
    if cfg.default_scope == 'mmdet':
        assert cfg.model.neck.type == 'SimpleFeaturePyramid'
        assert cfg.model.neck.backbone_channel == PAPER[cfg.model.backbone.arch][1]
        # The Runner needs all three of val_dataloader, val_evaluator and val_cfg (mmdet's schedules give the loops).
        assert (cfg.train_cfg.type, cfg.val_cfg.type, cfg.test_cfg.type) == ('IterBasedTrainLoop', 'ValLoop', 'TestLoop')
        batch = tiny_detection_batch(num_images=2)
        depth, dim = 2, 32
    else:
        assert cfg.model.neck.type == 'MultiLevelNeck' and cfg.model.neck.scales == [4, 2, 1, 0.5]
        assert cfg.model.backbone.out_indices == (3, 8, 12, 17)
        assert cfg.model.decode_head.in_channels == [PAPER[cfg.model.backbone.arch][1]] * 4
        batch = tiny_segmentation_batch()
        depth, dim = 4, 32
    shrink(cfg, depth, dim)
    runtime.fit_config_to_machine(cfg, distributed=False)
    model = build_model(cfg).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    stem_groups = [g for g in optim_wrapper.optimizer.param_groups
                   if any(p is model.backbone.stem.weight for p in g['params'])]
    assert [g['layer_id'] for g in stem_groups] == [0]
    gradients = []
    model.backbone.stem.weight.register_hook(lambda grad: gradients.append(grad.abs().sum().item()))
    before = model.backbone.stem.weight.detach().clone()
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(math.isfinite(float(value)) for value in losses.values()), losses
    assert gradients and gradients[0] > 0
    assert not torch.equal(before, model.backbone.stem.weight)


def test_mmengine_load_checkpoint_of_another_depth_stops(tmp_path):
    """The model's own loading checks what any loader gives it (here mmengine's, as load_from and init_detector)."""
    from mmengine.runner import load_checkpoint
    path = str(tmp_path / 'deeper.pth')
    torch.save({'state_dict': reference_model(5, 32, 0.).state_dict()}, path)
    model = ConvNeXtIsotropic(arch=dict(depth=4, dim=32))
    with pytest.raises(CheckpointError, match=r'isotropic ConvNeXt of 5 blocks x 32.*not in this backbone: blocks\.4\.'):
        load_checkpoint(model, path, map_location='cpu')


def test_a_neck_written_for_another_width_names_the_isotropic_arch():
    """The width check (BackboneWidthCheckHook's) on a model whose neck is mmseg's MultiLevelNeck, as in the UperNet
    configs, written for another width."""
    from mmseg.models.necks import MultiLevelNeck

    from convnext_mm.width_check import check_consumer_widths
    model = nn.Module()
    model.backbone = ConvNeXtIsotropic(arch=dict(depth=2, dim=32), out_indices=(0, 1))
    model.neck = MultiLevelNeck(in_channels=[64, 64], out_channels=16, scales=[1, 1])
    with pytest.raises(ValueError) as error:
        check_consumer_widths(model)
    assert str(error.value) == (
        'MultiLevelNeck (model.neck) expects in_channels=[64, 64], but the backbone, an isotropic ConvNeXt of 2 '
        'blocks x 32, without layer scale, outputs [32, 32] channels at out_indices (0, 1). Write '
        "neck=dict(in_channels=[32, 32]) in the config's model, or pick the arch the neck was written for.")
    model.neck = MultiLevelNeck(in_channels=[32, 32], out_channels=16, scales=[1, 1])
    check_consumer_widths(model)


def test_the_tools_whole_model_check_applies_the_isotropic_backbones_rule(tmp_path):
    """tools/trained_model.check_fits (of tools/infer.py and export_onnx.py) runs the backbone's own rule here too."""
    from trained_model import CheckpointMismatchError, check_fits

    class Detector(torch.nn.Module):
        def __init__(self, depth):
            super().__init__()
            self.backbone = ConvNeXtIsotropic(arch=dict(depth=depth, dim=32))

    model = Detector(2)
    fitting = {'state_dict': {'backbone.' + k: v for k, v in Detector(2).backbone.state_dict().items()}}
    assert sorted(check_fits(model, fitting, 'same.pth', 'config.py')) == sorted(model.state_dict())
    deeper = {'state_dict': {'backbone.' + k: v for k, v in Detector(3).backbone.state_dict().items()}}
    with pytest.raises(CheckpointMismatchError, match=r'deeper\.pth does not fit the model of config\.py: .*'
                                                     r'isotropic ConvNeXt of 3 blocks x 32.*Write arch=dict'):
        check_fits(model, deeper, 'deeper.pth', 'config.py')
