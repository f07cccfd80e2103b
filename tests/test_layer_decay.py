"""ConvNeXtLayerDecayOptimizerConstructor: the official lr-scale tables, the weight-decay split, mmengine's
paramwise options, optimizer wrappers and LR schedulers, and the errors for bad input."""
import io
import logging

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import LinearLR, MultiStepLR, PolyLR, build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

import mmdet.registry
import mmseg.registry
from convnext_mm import ConvNeXt, ConvNeXtLayerDecayOptimizerConstructor
from layer_decay_tables import (CONVNEXT_S_LAYER_WISE_IDS, CONVNEXT_S_LAYER_WISE_SCALES_07, CONVNEXT_T_LAYER_WISE_IDS,
                                CONVNEXT_T_LAYER_WISE_SCALES, STAGE_WISE_SCALES_09, stage_wise_ids)
from tiny_models import SMALLEST_LAYER_WISE_ARCH

BASE_LR = 1e-4
WEIGHT_DECAY = 0.05


class Model(nn.Module):
    """A ConvNeXt backbone with a neck and a head, laid out as mmdet's and mmseg's models are."""

    def __init__(self, **backbone_kwargs):
        super().__init__()
        self.backbone = ConvNeXt(**backbone_kwargs)
        self.neck = nn.Conv2d(self.backbone.dims[-1], 8, kernel_size=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.neck(self.backbone(x)[-1]).mean(dim=(2, 3)))


class Wrapped(nn.Module):
    """Holds the model as ``.module``, as (MM)DistributedDataParallel does."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def build(model, scope='mmdet', optimizer=None, wrapper=None, **paramwise_cfg):
    cfg = dict(
        constructor='ConvNeXtLayerDecayOptimizerConstructor',
        optimizer=optimizer or dict(type='AdamW', lr=BASE_LR, weight_decay=WEIGHT_DECAY),
        paramwise_cfg=paramwise_cfg,
        **(wrapper or {}))
    # The Runner builds under the config's default scope: this exercises mmdet's or mmseg's registration.
    with DefaultScope.overwrite_default_scope(scope):
        return build_optim_wrapper(model, cfg)


def group_by_name(model, optim_wrapper):
    group_of = {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    return {name: group_of[id(p)] for name, p in model.named_parameters() if id(p) in group_of}


def assert_table(model, optim_wrapper, ids_by_prefix, scale_by_id):
    """Every trainable parameter has the layer id of the one prefix it starts with and that id's lr scale."""
    groups = group_by_name(model, optim_wrapper)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(groups) == sorted(trainable)
    used = set()
    for name in trainable:
        prefixes = [prefix for prefix in ids_by_prefix if name.startswith(prefix)]
        assert len(prefixes) == 1, (name, prefixes)
        used.add(prefixes[0])
        expected_id = ids_by_prefix[prefixes[0]]
        assert groups[name]['layer_id'] == expected_id, name
        assert groups[name]['lr'] == pytest.approx(BASE_LR * scale_by_id[expected_id], rel=1e-8), name
    assert used == set(ids_by_prefix)  # no row of the table is vacuous




@pytest.fixture(scope='module')
def convnext_t():
    return Model(arch='tiny')


@pytest.mark.parametrize('decay_rate, scope', [(0.95, 'mmdet'), (0.7, 'mmseg')])
def test_convnext_tiny_layer_wise_table(convnext_t, decay_rate, scope):
    optim_wrapper = build(convnext_t, scope, decay_rate=decay_rate, decay_type='layer_wise', num_layers=6)
    assert_table(convnext_t, optim_wrapper, CONVNEXT_T_LAYER_WISE_IDS, CONVNEXT_T_LAYER_WISE_SCALES[decay_rate])


def test_convnext_small_layer_wise_table():
    model = Model(arch='small')
    optim_wrapper = build(model, 'mmdet', decay_rate=0.7, decay_type='layer_wise', num_layers=12)
    assert_table(model, optim_wrapper, CONVNEXT_S_LAYER_WISE_IDS, CONVNEXT_S_LAYER_WISE_SCALES_07)


@pytest.mark.parametrize('num_layers, scope', [(6, 'mmseg'), (12, 'mmdet')])
def test_stage_wise_table(convnext_t, num_layers, scope):
    optim_wrapper = build(convnext_t, scope, decay_rate=0.9, decay_type='stage_wise', num_layers=num_layers)
    assert_table(convnext_t, optim_wrapper, stage_wise_ids(num_layers), STAGE_WISE_SCALES_09[num_layers])


def test_registered_in_mmdet_and_mmseg_next_to_their_own_constructors():
    for registry in (mmdet.registry.OPTIM_WRAPPER_CONSTRUCTORS, mmseg.registry.OPTIM_WRAPPER_CONSTRUCTORS):
        assert registry.get('ConvNeXtLayerDecayOptimizerConstructor') is ConvNeXtLayerDecayOptimizerConstructor
        assert registry.get('LearningRateDecayOptimizerConstructor') is not ConvNeXtLayerDecayOptimizerConstructor


def test_backbone_alone_and_wrapped_model():
    backbone = ConvNeXt(arch=SMALLEST_LAYER_WISE_ARCH)
    optim_wrapper = build(backbone, decay_rate=0.5, num_layers=5)  # decay_type defaults to layer_wise
    groups = group_by_name(backbone, optim_wrapper)
    assert groups['downsample_layers.0.0.weight']['layer_id'] == 0
    assert groups['stages.2.3.pwconv1.weight']['layer_id'] == 4
    assert groups['downsample_layers.3.1.weight']['layer_id'] == 5
    assert groups['norm3.weight']['layer_id'] == 6
    assert groups['norm3.weight']['lr'] == pytest.approx(BASE_LR)
    assert groups['downsample_layers.0.0.weight']['lr'] == pytest.approx(BASE_LR * 0.5**6)

    model = Model(arch=SMALLEST_LAYER_WISE_ARCH)
    optim_wrapper = build(Wrapped(model), decay_rate=0.5, num_layers=5)
    groups = group_by_name(model, optim_wrapper)
    assert len(groups) == len(list(model.parameters()))
    assert groups['backbone.downsample_layers.0.0.weight']['lr'] == pytest.approx(BASE_LR * 0.5**6)
    assert groups['head.weight']['lr'] == pytest.approx(BASE_LR)


def test_weight_decay_split(convnext_t):
    optim_wrapper = build(convnext_t, decay_rate=0.95, num_layers=6)
    groups = group_by_name(convnext_t, optim_wrapper)
    not_decayed = ['backbone.downsample_layers.0.0.bias', 'backbone.downsample_layers.0.1.weight', 'backbone.downsample_layers.0.1.bias',
                   'backbone.stages.0.0.gamma', 'backbone.stages.0.0.norm.weight',
                   'backbone.stages.0.0.dwconv.bias', 'backbone.stages.2.4.pwconv1.bias',
                   'backbone.downsample_layers.1.0.weight', 'backbone.downsample_layers.1.1.bias',
                   'backbone.norm3.weight', 'neck.bias', 'head.bias']
    decayed = ['backbone.downsample_layers.0.0.weight', 'backbone.stages.0.0.dwconv.weight',
               'backbone.stages.0.0.pwconv1.weight', 'backbone.stages.3.2.pwconv2.weight',
               'backbone.downsample_layers.1.1.weight', 'neck.weight', 'head.weight']
    for name in not_decayed:
        assert groups[name]['weight_decay'] == 0, name
    for name in decayed:
        assert groups[name]['weight_decay'] == WEIGHT_DECAY, name
    for name, param in convnext_t.named_parameters():
        expected = 0 if param.ndim == 1 or name.endswith('.bias') else WEIGHT_DECAY
        assert groups[name]['weight_decay'] == expected, name


def test_custom_keys_on_top_of_the_decay():
    model = Model(arch=SMALLEST_LAYER_WISE_ARCH)
    custom_keys = {
        'head': dict(lr_mult=10.),
        # Equally long and both in stage 0 block 0's names: mmengine's rule picks the alphabetically first,
        # 'ages.0.0', whatever the order here.
        'stages.0': dict(lr_mult=3.),
        'ages.0.0': dict(lr_mult=0.5, decay_mult=0.),
        'layers.3': dict(decay_mult=0.5),
        # Both in stage 2 block 3's names: the longer wins though it comes later alphabetically.
        '2.3.': dict(lr_mult=7.),
        'stages.2.3': dict(lr_mult=4.),
        'backbone.stages.1.1.pwconv1': dict(lr_mult=2., decay_mult=2.),
    }
    optim_wrapper = build(model, 'mmseg', decay_rate=0.5, num_layers=5, custom_keys=custom_keys)
    groups = group_by_name(model, optim_wrapper)
    scale = {layer_id: 0.5**(6 - layer_id) for layer_id in range(7)}

    def check(name, lr_scale, weight_decay):
        assert groups[name]['lr'] == pytest.approx(BASE_LR * lr_scale), name
        assert groups[name]['weight_decay'] == pytest.approx(weight_decay), name

    check('head.weight', 10 * scale[6], WEIGHT_DECAY)
    check('head.bias', 10 * scale[6], 0.)  # no decay_mult: the official split holds
    check('neck.weight', scale[6], WEIGHT_DECAY)
    check('backbone.norm0.weight', scale[6], 0.)
    check('backbone.stages.0.0.pwconv1.weight', 0.5 * scale[1], 0.)
    check('backbone.stages.0.0.gamma', 0.5 * scale[1], 0.)
    check('backbone.stages.1.0.pwconv1.weight', scale[2], WEIGHT_DECAY)
    check('backbone.downsample_layers.1.1.weight', scale[2], WEIGHT_DECAY)
    # A custom decay_mult applies to biases too.
    check('backbone.stages.1.1.pwconv1.weight', 2 * scale[2], 2 * WEIGHT_DECAY)
    check('backbone.stages.1.1.pwconv1.bias', 2 * scale[2], 2 * WEIGHT_DECAY)
    check('backbone.stages.1.1.pwconv2.weight', scale[2], WEIGHT_DECAY)
    check('backbone.stages.2.0.pwconv1.weight', scale[3], WEIGHT_DECAY)
    check('backbone.stages.2.3.pwconv1.weight', 4 * scale[4], WEIGHT_DECAY)
    check('backbone.stages.2.3.gamma', 4 * scale[4], 0.)
    # decay_mult alone: the lr keeps its decay, and 1-D parameters are decayed too.
    check('backbone.downsample_layers.3.1.weight', scale[5], 0.5 * WEIGHT_DECAY)
    check('backbone.downsample_layers.3.0.bias', scale[5], 0.5 * WEIGHT_DECAY)


def test_norm_and_bias_decay_mult():
    model = Model(arch=SMALLEST_LAYER_WISE_ARCH, use_grn=True)
    optim_wrapper = build(model, decay_rate=0.9, num_layers=5, norm_decay_mult=0.5, bias_decay_mult=2.)
    groups = group_by_name(model, optim_wrapper)
    expected = {
        # norm layers (LayerNorm, LayerNorm2d): weight and bias
        'backbone.downsample_layers.0.1.weight': 0.5, 'backbone.downsample_layers.0.1.bias': 0.5,
        'backbone.downsample_layers.1.0.weight': 0.5,
        'backbone.stages.0.0.norm.bias': 0.5, 'backbone.norm2.weight': 0.5,
        # other biases
        'backbone.downsample_layers.0.0.bias': 2., 'backbone.stages.0.0.dwconv.bias': 2., 'head.bias': 2.,
        'backbone.stages.2.3.pwconv2.bias': 2.,
        # 1-D, neither norm layer nor bias: the official 0 holds
        'backbone.stages.0.0.grn.gamma': 0., 'backbone.stages.0.0.grn.beta': 0.,
        # weights
        'backbone.stages.0.0.pwconv1.weight': 1., 'head.weight': 1.,
    }
    for name, mult in expected.items():
        assert groups[name]['weight_decay'] == pytest.approx(WEIGHT_DECAY * mult), name
        assert groups[name]['lr'] == pytest.approx(BASE_LR * 0.9**(6 - groups[name]['layer_id'])), name


def test_frozen_parameters_left_out():
    model = Model(arch=SMALLEST_LAYER_WISE_ARCH, frozen_stages=2)
    optim_wrapper = build(model, decay_rate=0.9, num_layers=5)
    optimized = {id(p) for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(name.startswith(('backbone.downsample_layers.0.', 'backbone.downsample_layers.1.',
                                           'backbone.stages.0.', 'backbone.stages.1.', 'backbone.norm0.',
                                           'backbone.norm1.')) for name in frozen)
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert {g['layer_id'] for g in optim_wrapper.optimizer.param_groups} == {3, 4, 5, 6}


def test_convnext_v2_backbone():
    model = Model(arch='atto', use_grn=True)  # stage-2 depth 6: layer_wise needs num_layers >= 5
    assert not any(name.endswith('.gamma') and 'grn' not in name for name, _ in model.named_parameters())
    optim_wrapper = build(model, decay_rate=0.8, num_layers=5)
    groups = group_by_name(model, optim_wrapper)
    assert len(groups) == len(list(model.parameters()))
    for block, layer_id in enumerate([3, 3, 3, 4, 4, 4]):
        for suffix in ('grn.gamma', 'grn.beta', 'pwconv1.weight'):
            group = groups[f'backbone.stages.2.{block}.{suffix}']
            assert group['layer_id'] == layer_id
            assert group['lr'] == pytest.approx(BASE_LR * 0.8**(6 - layer_id))
            assert group['weight_decay'] == (WEIGHT_DECAY if suffix == 'pwconv1.weight' else 0)
    assert groups['backbone.stages.3.1.grn.beta']['layer_id'] == 5
    with pytest.raises(ValueError, match=r'num_layers=4 is too small for ConvNeXt V2-atto \(depths=\[2, 2, 6, 2\], '
                                         r'dims=\[40, 80, 160, 320\]\): layer_wise needs num_layers >= 5'):
        build(model, decay_rate=0.8, num_layers=4)


def test_logs_one_compact_table():
    model = Model(arch=SMALLEST_LAYER_WISE_ARCH, frozen_stages=1)
    logger = MMLogger.get_instance('test_layer_decay_table')  # becomes the current instance
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        optim_wrapper = build(model, decay_rate=0.9, num_layers=5)
    finally:
        logger.removeHandler(handler)
    logged = stream.getvalue().splitlines()
    headers = [i for i, line in enumerate(logged) if line.startswith('ConvNeXt layer_wise lr decay')]
    assert len(headers) == 1
    groups = optim_wrapper.optimizer.param_groups
    lines = logged[headers[0]:headers[0] + 2 + len(groups)]
    assert 'decay_rate=0.9' in lines[0] and 'num_layers=5' in lines[0]
    frozen = sum(not p.requires_grad for p in model.parameters())
    assert f'{frozen} frozen' in lines[0]
    assert lines[1].split() == ['layer', 'lr', 'scale', 'weight', 'decay', 'tensors', 'params']
    assert len(lines) == 2 + len(groups)
    for line, group in zip(lines[2:], groups):
        layer_id, lr_scale, weight_decay, tensors, numel = line.split()
        assert int(layer_id) == group['layer_id']
        assert float(lr_scale) == pytest.approx(group['lr'] / BASE_LR, rel=1e-5)
        assert float(weight_decay) == pytest.approx(group['weight_decay'])
        assert int(tensors) == len(group['params'])
        assert int(numel.replace(',', '')) == sum(p.numel() for p in group['params'])


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_optim_wrapper_with_gradient_clipping(scope):
    torch.manual_seed(0)
    model = Model(arch=SMALLEST_LAYER_WISE_ARCH, out_indices=(3, ))  # every parameter then gets a gradient
    max_norm = 1e-3
    optim_wrapper = build(model, scope, optimizer=dict(type='SGD', lr=0.1, weight_decay=0.),
                          wrapper=dict(type='OptimWrapper', clip_grad=dict(max_norm=max_norm)),
                          decay_rate=0.5, num_layers=5)
    loss = model(torch.randn(2, 3, 32, 32)).square().sum() + 1.
    optim_wrapper.backward(loss)
    params = [p for p in model.parameters()]
    assert torch.norm(torch.stack([p.grad.norm() for p in params])) > 10 * max_norm
    before = [p.detach().clone() for p in params]
    optim_wrapper.step()
    assert torch.norm(torch.stack([p.grad.norm() for p in params])) == pytest.approx(max_norm, rel=1e-4)
    # Plain SGD: every parameter moved by its own group's lr times its clipped gradient.
    lr_of = {id(p): g['lr'] for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    for param, old in zip(params, before):
        torch.testing.assert_close(param.detach(), old - lr_of[id(param)] * param.grad)
    assert len(set(lr_of.values())) == 7


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only behaviour')
def test_amp_optim_wrapper_without_cuda_says_so():
    with pytest.raises(ValueError, match=r"AmpOptimWrapper.*needs a GPU.*--cfg-options optim_wrapper\.type=OptimWrapper"):
        build(Model(arch=SMALLEST_LAYER_WISE_ARCH), wrapper=dict(type='AmpOptimWrapper'), decay_rate=0.9, num_layers=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mmengine's AmpOptimWrapper needs CUDA")
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_amp_optim_wrapper_with_clipping_on_cuda(scope):
    # Only the last output feeds the head: the other output norms would get no gradient and never move.
    model = Model(arch=SMALLEST_LAYER_WISE_ARCH, out_indices=(3, )).cuda()
    optim_wrapper = build(model, scope, wrapper=dict(type='AmpOptimWrapper', clip_grad=dict(max_norm=1.)),
                          decay_rate=0.9, num_layers=5)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(2, 3, 32, 32, device='cuda')
    # The dynamic loss scale starts at 2**16 and halves at each step whose fp16 gradients overflow, which it
    # skips (GradScaler's design; a CPU run of this model overflows at 2**16): a few steps until one is taken.
    for _ in range(16):
        scale = optim_wrapper.loss_scaler.get_scale()
        with optim_wrapper.optim_context(model):
            loss = model(x).float().square().sum()
        optim_wrapper.update_params(loss)
        if optim_wrapper.loss_scaler.get_scale() >= scale:  # not backed off: this step was taken
            break
    assert all(not torch.equal(p, old) for p, old in zip(model.parameters(), before))
    lrs = sorted({g['lr'] for g in optim_wrapper.optimizer.param_groups})
    assert lrs == pytest.approx([BASE_LR * 0.9**k for k in range(6, -1, -1)])


def assert_ratios_kept(optim_wrapper):
    groups = optim_wrapper.optimizer.param_groups
    top = next(g for g in groups if g['lr_scale'] == 1)
    for group in groups:
        assert group['lr'] / top['lr'] == pytest.approx(group['lr_scale'], rel=1e-9)
    return top['lr']


def test_ratios_kept_through_linear_warmup_and_multistep(convnext_t):
    optim_wrapper = build(convnext_t, decay_rate=0.95, num_layers=6)
    schedulers = [
        LinearLR(optim_wrapper, start_factor=0.001, by_epoch=False, begin=0, end=5),
        MultiStepLR(optim_wrapper, milestones=[7, 9], gamma=0.1, by_epoch=False),
    ]
    # The head's factor of base_lr after each step: linear from 0.001 at step 0 to 1 at step 4 (mmengine's
    # LinearLR stops updating at `end`), then x0.1 at steps 7 and 9.
    expected = [0.001, 0.25075, 0.5005, 0.75025, 1., 1., 1., 0.1, 0.1, 0.01, 0.01, 0.01]
    for step, factor in enumerate(expected):
        if step:
            optim_wrapper.step()  # no gradients: the optimizer skips every parameter
            for scheduler in schedulers:
                scheduler.step()
        assert assert_ratios_kept(optim_wrapper) == pytest.approx(BASE_LR * factor), step


def test_ratios_kept_through_linear_warmup_and_poly(convnext_t):
    optim_wrapper = build(convnext_t, 'mmseg', decay_rate=0.9, decay_type='stage_wise', num_layers=12)
    schedulers = [
        LinearLR(optim_wrapper, start_factor=1e-6, by_epoch=False, begin=0, end=3),
        PolyLR(optim_wrapper, power=1., eta_min=0., by_epoch=False, begin=3, end=11),
    ]
    top_lrs = [assert_ratios_kept(optim_wrapper)]
    for _ in range(9):
        optim_wrapper.step()
        for scheduler in schedulers:
            scheduler.step()
        top_lrs.append(assert_ratios_kept(optim_wrapper))
    assert top_lrs[0] == pytest.approx(BASE_LR * 1e-6)
    assert top_lrs[2] == pytest.approx(BASE_LR)  # warmup done
    # Power 1 from step 3 (its first step leaves the lr as it is) to 0 at step 10: base_lr / 7 less per step.
    assert top_lrs[3:] == pytest.approx([BASE_LR * (7 - k) / 7 for k in range(7)])


@pytest.mark.parametrize('paramwise_cfg, match', [
    (dict(decay_rate=0.9, decay_type='block_wise', num_layers=6), "unknown decay_type 'block_wise'"),
    (dict(decay_rate=0., num_layers=6), r'decay_rate=0\.0 must be a number in \(0, 1\]'),
    (dict(decay_rate=1.5, num_layers=6), r'decay_rate=1\.5 must be a number in \(0, 1\]'),
    (dict(decay_rate=-0.9, num_layers=6), r'decay_rate=-0\.9'),
    (dict(decay_rate='0.9', num_layers=6), r"decay_rate='0\.9'"),
    (dict(num_layers=6), 'paramwise_cfg needs decay_rate'),
    (dict(decay_rate=0.9), 'paramwise_cfg needs num_layers'),
    (dict(decay_rate=0.9, num_layers=6.0), r'num_layers=6\.0 must be an int'),
    (dict(decay_rate=0.9, num_layers=6, dwconv_decay_mult=0.),
     r"unsupported paramwise_cfg keys \['dwconv_decay_mult'\]"),
    (dict(decay_rate=0.9, num_layers=6, custom_keys={'head': dict(lr_mul=2.)}),
     r"custom_keys\['head'\] has unsupported fields \['lr_mul'\]"),
])
def test_bad_config(paramwise_cfg, match):
    with pytest.raises(ValueError, match=match):
        ConvNeXtLayerDecayOptimizerConstructor(
            dict(optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=WEIGHT_DECAY)), paramwise_cfg)


def test_bad_config_through_the_registry():
    with pytest.raises(ValueError, match="unknown decay_type 'blockwise'"):
        build(Model(arch=SMALLEST_LAYER_WISE_ARCH), 'mmseg', decay_rate=0.9, decay_type='blockwise', num_layers=6)
    with pytest.raises(ValueError, match=r'optimizer\.weight_decay=None'):
        build(Model(arch=SMALLEST_LAYER_WISE_ARCH), optimizer=dict(type='AdamW', lr=BASE_LR), decay_rate=0.9, num_layers=6)


@pytest.mark.parametrize('arch, decay_type, num_layers, minimum', [
    ('tiny', 'layer_wise', 5, 6),
    ('small', 'layer_wise', 11, 12),
    ('tiny', 'stage_wise', 3, 4),
])
def test_num_layers_too_small(arch, decay_type, num_layers, minimum):
    model = Model(arch=arch)
    with pytest.raises(ValueError, match=rf'num_layers={num_layers} is too small.*{decay_type} needs '
                                         rf'num_layers >= {minimum}'):
        build(model, decay_rate=0.9, decay_type=decay_type, num_layers=num_layers)
    build(model, decay_rate=0.9, decay_type=decay_type, num_layers=minimum)  # the minimum itself is fine


class ResNetLike(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, kernel_size=3)
        self.head = nn.Linear(8, 2)


@pytest.mark.parametrize('model, match', [
    (ResNetLike(), 'got ResNetLike with backbone of type Conv2d'),
    (nn.Linear(3, 2), 'got Linear with no backbone attribute'),
])
def test_model_without_convnext_backbone(model, match):
    with pytest.raises(TypeError, match=match):
        build(model, decay_rate=0.9, num_layers=6)


def test_the_backbone_answers_mmpretrains_get_layer_depth():
    """mmpretrain's protocol (its LearningRateDecayOptimWrapperConstructor calls get_layer_depth(name, 'backbone.')):
    (layer id, num_layers + 2) with mmpretrain's num_layers, 6 for tiny and 12 for small and larger, by default."""
    tiny, small = ConvNeXt(arch='tiny'), ConvNeXt(arch='small')
    for backbone, num_layers in ((tiny, 6), (small, 12)):
        ids = {'backbone.downsample_layers.0.0.weight': 0, 'backbone.stages.0.2.gamma': 1,
               'backbone.downsample_layers.1.1.bias': 2, 'backbone.stages.2.0.dwconv.weight': 3,
               'backbone.stages.2.8.pwconv2.weight': 5, 'backbone.stages.3.0.norm.weight': num_layers,
               'backbone.norm3.weight': num_layers + 1, 'neck.lateral_convs.0.conv.weight': num_layers + 1}
        for name, layer_id in ids.items():
            assert backbone.get_layer_depth(name, 'backbone.') == (layer_id, num_layers + 2), name
    assert small.get_layer_depth('stages.2.26.pwconv1.weight') == (11, 14)
    assert tiny.get_layer_depth('stages.2.8.pwconv1.weight', decay_type='stage_wise', num_layers=12) == (3, 14)
    with pytest.raises(ValueError, match="unknown decay_type 'block_wise'"):
        tiny.get_layer_depth('stages.0.0.gamma', decay_type='block_wise')


class AnyBackbone(nn.Module):
    """A backbone of no convnext_mm class that answers get_layer_depth: stem 0, everything else on top."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.body = nn.Conv2d(4, 4, 1)

    def get_layer_depth(self, param_name, prefix='', decay_type='layer_wise', num_layers=None):
        return (0 if param_name.startswith(prefix + 'stem.') else num_layers + 1), num_layers + 2


def test_the_constructor_asks_the_model_and_knows_no_model_class():
    model = nn.Module()
    model.backbone, model.head = AnyBackbone(), nn.Linear(4, 2)
    groups = group_by_name(model, build(model, decay_rate=0.5, num_layers=2))
    assert {name: group['lr'] for name, group in groups.items() if name.endswith('weight')} == pytest.approx({
        'backbone.stem.weight': BASE_LR * 0.5**3, 'backbone.body.weight': BASE_LR, 'head.weight': BASE_LR})
    alone = AnyBackbone()  # a backbone built on its own answers for itself
    assert group_by_name(alone, build(alone, decay_rate=0.5, num_layers=2))['stem.weight']['layer_id'] == 0
