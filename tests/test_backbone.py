"""The ConvNeXt backbone: shapes, registries, numerics against the paper's formulation (tests/reference.py),
options, bad input."""
import pytest
import torch
import torch.nn.functional as F

import reference
from convnext_mm import ConvNeXt
from convnext_mm.backbone import ARCH_SETTINGS
from convnext_mm.blocks import ConvNeXtBlock

from checkpoint_layouts import backbone_tensors, official_layout
from tiny_models import SMALLEST_ARCH, randomize


def reference_outputs(model, x):
    """The paper's formulation (tests/reference.py) holding ``model``'s weights, on ``x``."""
    return reference.like(model)(x)


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
def test_every_preset_gives_strides_4_to_32_at_an_odd_size(arch):
    model = ConvNeXt(arch=arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 225, 301))
    dims = ARCH_SETTINGS[arch]['dims']
    # Each conv floors: 225x301 -> 56x75 -> 28x37 -> 14x18 -> 7x9.
    assert [tuple(o.shape) for o in outs] == [(1, dims[0], 56, 75), (1, dims[1], 28, 37), (1, dims[2], 14, 18),
                                             (1, dims[3], 7, 9)]


@pytest.mark.parametrize('use_grn', [False, True], ids=['v1', 'v2'])
def test_matches_the_paper_formulation(use_grn):
    model = randomize(ConvNeXt(arch=SMALLEST_ARCH, out_indices=(0, 1, 2, 3), use_grn=use_grn)).eval()
    x = torch.randn(2, 3, 70, 97)
    with torch.no_grad():
        outs = model(x)
        expected = reference_outputs(model, x)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_v2_blocks_have_grn_and_no_layer_scale():
    keys = ConvNeXt(arch='atto', use_grn=True).state_dict().keys()
    assert 'stages.0.0.grn.gamma' in keys and 'stages.0.0.grn.beta' in keys
    assert not any(k.endswith('.gamma') and '.grn.' not in k for k in keys)
    v1_keys = ConvNeXt(arch='atto').state_dict().keys()
    assert 'stages.0.0.gamma' in v1_keys and not any('.grn.' in k for k in v1_keys)


def test_out_indices_subset_and_negative():
    model = ConvNeXt(arch=SMALLEST_ARCH, out_indices=(-1, 1)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 64]
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3') and not hasattr(model, 'norm0')


@pytest.mark.parametrize('library', ['mmdet', 'mmseg'])
def test_builds_from_config_in_both_registries(library):
    import importlib
    registry = importlib.import_module(f'{library}.registry').MODELS
    model = registry.build(dict(type='ConvNeXt', arch='atto', out_indices=(1, 3), drop_path_rate=0.1))
    assert isinstance(model, ConvNeXt)
    assert registry.get('ConvNeXt') is ConvNeXt
    assert len(model(torch.randn(1, 3, 64, 64))) == 2


def test_default_init_is_truncated_normal_with_zero_bias():
    model = ConvNeXt(arch='atto')
    model.init_weights()
    weight = model.stages[2][0].pwconv1.weight
    # As the official code: std 0.02, truncated at +-2 (absolute, so in effect untruncated).
    assert abs(weight.std().item() - 0.02) < 0.002 and abs(weight.mean().item()) < 0.002
    assert torch.all(model.stages[2][0].pwconv1.bias == 0)
    torch.testing.assert_close(model.stages[0][0].gamma, torch.full((40, ), 1e-6))


def test_layer_scale_init_value():
    model = ConvNeXt(arch=SMALLEST_ARCH, layer_scale_init_value=1.0)
    assert torch.all(model.stages[3][0].gamma == 1.0)
    assert ConvNeXt(arch=SMALLEST_ARCH, layer_scale_init_value=0).stages[3][0].gamma is None


@pytest.mark.parametrize('frozen_stages', [1, 2, 3])
def test_frozen_stages_get_no_gradient_and_stay_in_eval(frozen_stages):
    model = ConvNeXt(arch=SMALLEST_ARCH, frozen_stages=frozen_stages, drop_path_rate=0.3)
    model.train()
    frozen = [model.downsample_layers[0]] + [model.stages[i] for i in range(frozen_stages)] + \
        [getattr(model, f'norm{i}') for i in range(frozen_stages)]
    trainable = [model.stages[i] for i in range(frozen_stages, 4)] + \
        [getattr(model, f'norm{i}') for i in range(frozen_stages, 4)]
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    for module in trainable:
        assert module.training
        assert all(p.requires_grad and p.grad is not None for p in module.parameters())


def test_all_four_stages_frozen_leaves_nothing_trainable():
    model = ConvNeXt(arch=SMALLEST_ARCH, frozen_stages=4).train()
    assert not any(p.requires_grad for p in model.parameters())
    parts = [model.downsample_layers[0], *model.stages, *(getattr(model, f'norm{i}') for i in range(4))]
    assert not any(m.training for part in parts for m in part.modules())


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = randomize(ConvNeXt(arch=SMALLEST_ARCH))
    checkpointed = ConvNeXt(arch=SMALLEST_ARCH, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        inp = x.clone().requires_grad_()
        outs = model(inp)
        sum((o * o).mean() for o in outs).backward()
        grads.append([inp.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_drop_path_is_identity_in_eval_and_random_in_train():
    with_drop = randomize(ConvNeXt(arch=SMALLEST_ARCH, drop_path_rate=0.5))
    without = ConvNeXt(arch=SMALLEST_ARCH, drop_path_rate=0.0)
    without.load_state_dict(with_drop.state_dict())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(with_drop.eval()(x), without.eval()(x)):
            torch.testing.assert_close(a, b)
        torch.manual_seed(1)
        trained = with_drop.train()(x)[3]
    assert not torch.allclose(trained, without(x)[3])


def test_drop_path_rates_rise_linearly_from_zero_over_all_blocks():
    model = ConvNeXt(arch=SMALLEST_ARCH, drop_path_rate=0.5)  # 1 + 1 + 2 + 1 = 5 blocks
    rates = [getattr(block.drop_path, 'drop_prob', 0.0) for stage in model.stages for block in stage]
    assert rates == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])


def test_drop_path_drops_whole_samples_and_scales_kept_ones_by_the_keep_probability():
    block = randomize(ConvNeXtBlock(8, drop_path=0.25))
    x = torch.randn(64, 8, 5, 5)
    with torch.no_grad():
        branch = block.eval()(x) - x
        torch.manual_seed(0)
        trained = block.train()(x) - x
    dropped = [bool(torch.all(t == 0)) for t in trained]
    for t, b, is_dropped in zip(trained, branch, dropped):
        if not is_dropped:  # the whole residual branch of this sample, divided by 1 - 0.25
            torch.testing.assert_close(t, b / 0.75, rtol=1e-4, atol=1e-5)
    assert 0 < sum(dropped) < len(dropped)


@pytest.mark.parametrize('in_channels', [1, 4])
def test_other_input_channels_match_the_paper_formulation(in_channels):
    model = randomize(ConvNeXt(arch=SMALLEST_ARCH, in_channels=in_channels)).eval()
    assert model.downsample_layers[0][0].weight.shape == (8, in_channels, 4, 4)
    x = torch.randn(2, in_channels, 64, 72)
    with torch.no_grad():
        outs = model(x)
        expected = reference_outputs(model, x)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('frozen_stages', [0, -1])
def test_frozen_stages_0_and_minus_1_freeze_nothing(frozen_stages):
    model = ConvNeXt(arch=SMALLEST_ARCH, frozen_stages=frozen_stages).train()
    assert all(m.training for m in model.modules())
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    frozen = [name for name, p in model.named_parameters()
              if not p.requires_grad or p.grad is None or not torch.any(p.grad != 0)]
    assert not frozen


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='tinyy'), "unknown arch 'tinyy'"),
    (dict(arch=dict(depths=[3, 3, 9], dims=[96, 192, 384])), 'need 4 positive integers'),
    (dict(arch=dict(depths=[3, 3, 9, 3])), 'exactly the keys depths and dims'),
    (dict(out_indices=(0, 4)), 'out_indices entry 4 is out of range'),
    (dict(out_indices=(1, -3)), 'distinct stages'),
    (dict(frozen_stages=5), 'frozen_stages=5 is out of range'),
    (dict(drop_path_rate=1.5), 'drop_path_rate=1.5'),
    (dict(in_channels=0), r'in_channels=0 must be a positive integer'),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('[', r'\[')):
        ConvNeXt(**{'arch': SMALLEST_ARCH, **kwargs})


@pytest.mark.parametrize('x, message', [
    (torch.randn(3, 64, 64), r'NCHW image tensor .* got \(3, 64, 64\)'),
    (torch.randn(1, 1, 64, 64), 'in_channels=3 but the input has 1 channels'),
    (torch.randn(1, 3, 31, 64), 'at least 32x32 pixels .* got 31x64'),
])
def test_bad_input_tensors_are_named(x, message):
    model = ConvNeXt(arch=SMALLEST_ARCH)
    with pytest.raises(ValueError, match=message):
        model(x)


def test_smallest_input_of_32_pixels_works():
    outs = ConvNeXt(arch=SMALLEST_ARCH).eval()(torch.randn(1, 3, 32, 45))
    assert tuple(outs[-1].shape[2:]) == (1, 1)


# output_stride: timm's ConvNeXt rule (timm/models/convnext.py, ConvNeXt.__init__ and ConvNeXtStage), written out
# per dilated stage: (the downsample conv's dilation, its 'same' zero padding as F.pad's (left, right, top, bottom):
# (kernel 2 - 1) * dilation in all, the odd one at the bottom and right, as timm's pad_same, the blocks' dilation).
DILATED_STAGES = {
    16: {3: (1, (0, 1, 0, 1), 2)},
    8: {2: (1, (0, 1, 0, 1), 2), 3: (2, (1, 1, 1, 1), 4)},
}


def dilated_transcription(model, x, dilated):
    """The backbone's outputs on ``x`` written out: the paper's formulation (tests/reference.py) holding ``model``'s
    weights for the undilated stages; for each stage in ``dilated``, its LayerNorm, then its 2x2 downsample conv at
    stride 1 on the padded map, then each block with its 7x7 depthwise conv at the stage's dilation (padded by
    3 x dilation), all by torch.nn.functional's conv2d."""
    ref = reference.like(model)
    outs = []
    for i in range(4):
        x = ref.downsample_layers[i][0](x) if i in dilated else ref.downsample_layers[i](x)
        if i not in dilated:
            x = ref.stages[i](x)
        else:
            conv_dilation, padding, dilation = dilated[i]
            conv = ref.downsample_layers[i][1]
            x = F.conv2d(F.pad(x, padding), conv.weight, conv.bias, dilation=conv_dilation)
            for block in ref.stages[i]:
                y = F.conv2d(x, block.dwconv.weight, block.dwconv.bias, padding=3 * dilation, dilation=dilation,
                             groups=x.shape[1])
                y = block.pwconv2(block.act(block.pwconv1(block.norm(y.permute(0, 2, 3, 1)))) if block.grn is None
                                  else block.grn(block.act(block.pwconv1(block.norm(y.permute(0, 2, 3, 1))))))
                if block.gamma is not None:
                    y = block.gamma * y
                x = x + y.permute(0, 3, 1, 2)
        outs.append(getattr(ref, f'norm{i}')(x))
    return outs


@pytest.mark.parametrize('use_grn', [False, True], ids=['v1', 'v2'])
@pytest.mark.parametrize('output_stride', [16, 8])
def test_output_stride_dilates_the_last_stages_with_the_same_weights(tmp_path, output_stride, use_grn):
    source = randomize(ConvNeXt(arch=SMALLEST_ARCH, use_grn=use_grn)).eval()
    path = tmp_path / 'official.pth'
    torch.save(official_layout(source), path)  # a file written for the usual stride-32 model
    model = ConvNeXt(arch=SMALLEST_ARCH, use_grn=use_grn, output_stride=output_stride,
                     init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()  # every tensor checked: the same names and shapes
    for key, value in backbone_tensors(model).items():  # all but the output norms, which no file holds
        torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0, msg=key)
    model.eval()
    x = torch.randn(2, 3, 70, 97)
    with torch.no_grad():
        outs = model(x)
        expected = dilated_transcription(model, x, DILATED_STAGES[output_stride])
    strides = {16: [4, 8, 16, 16], 8: [4, 8, 8, 8]}[output_stride]
    assert model.out_strides == strides
    # 70x97 floored by each stride-2 conv: 17x24, 8x12, 4x6, 2x3; a dilated stage keeps its input's size.
    sizes = {4: (17, 24), 8: (8, 12), 16: (4, 6)}
    assert [tuple(o.shape[2:]) for o in outs] == [sizes[s] for s in strides]
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_output_stride_32_is_the_paper_model_and_a_dilated_one_trains():
    assert ConvNeXt(arch=SMALLEST_ARCH).out_strides == [4, 8, 16, 32]
    model = ConvNeXt(arch=SMALLEST_ARCH, output_stride=8, out_indices=(0, 3), drop_path_rate=0.2).train()
    assert model.out_strides == [4, 8]
    sum(o.sum() for o in model(torch.randn(2, 3, 16, 24))).backward()  # the smallest input: its output stride
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize('output_stride', [4, 64, 24, '16', True, None])
def test_bad_output_stride_names_the_allowed_values(output_stride):
    with pytest.raises(ValueError, match=r'ConvNeXt: output_stride=.* is not supported; allowed are 32 .*, 16 '
                                         r'\(stage 3 dilated: 4, 8, 16, 16\) and 8 \(stages 2 and 3 dilated'):
        ConvNeXt(arch=SMALLEST_ARCH, output_stride=output_stride)
