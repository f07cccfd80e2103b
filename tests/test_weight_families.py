"""The weight families users fine-tune beyond the paper's ImageNet files: DINOv3's ConvNeXt (transformers'
DINOv3ConvNext files written by its own ``save_pretrained``, timm's ``convnext_*.dinov3_lvd1689m``, the original
release) and CLIP's (open_clip's image tower under ``visual.trunk.``, timm's ``convnext_*.clip_*``, the
``xxlarge`` preset with its LayerNorm eps 1e-5): every tensor loaded through each loader, the outputs those of the
library that wrote the file, a LayerNorm eps that differs stopping with what to write."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint

from convnext_mm import ConvNeXt
from convnext_mm.backbone import ARCH_NORM_EPS, ARCH_SETTINGS
from convnext_mm.checkpoint import CheckpointError

from checkpoint_layouts import backbone_tensors, official_layout, timm_layout
from project import ROOT
from tiny_models import SMALLEST_ARCH, randomize, randomize_whole_model

transformers = pytest.importorskip('transformers')


def dinov3_reference(model_class, layer_norm_eps=1e-6):
    """transformers' DINOv3 ConvNeXt at the smallest test size, every tensor non-trivial (layer scale included,
    whose 1e-6 init would hide each block's branch)."""
    config = transformers.DINOv3ConvNextConfig(depths=SMALLEST_ARCH['depths'], hidden_sizes=SMALLEST_ARCH['dims'],
                                               layer_norm_eps=layer_norm_eps)
    return randomize_whole_model(getattr(transformers, model_class)(config)).eval()


def stage_maps(model, x):
    """``model``'s un-normalized stage maps (what goes on to the next stage) and its outputs, on ``x``."""
    maps = []
    hooks = [stage.register_forward_hook(lambda module, args, out: maps.append(out)) for stage in model.stages]
    try:
        with torch.no_grad():
            outs = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return maps, outs


def assert_gives_transformers_outputs(model, reference):
    """The stage maps of ``model`` are transformers' hidden states within 1e-4; each output is ``model``'s own
    output norm of transformers' map (the norms are the backbone's: no DINOv3 file holds them)."""
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        hidden = reference(pixel_values=x, output_hidden_states=True).hidden_states
    assert len(hidden) == 5 and hidden[0].shape == x.shape  # the input, then each stage's map
    hidden = hidden[1:]
    maps, outs = stage_maps(model.eval(), x)
    assert len(maps) == 4
    for i, (ours, theirs, out) in enumerate(zip(maps, hidden, outs)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(out, getattr(model, f'norm{i}')(theirs), rtol=1e-4, atol=1e-4)


def assert_same_backbone(model, state):
    """Every block, downsample and stem tensor of ``model`` is the one ``state`` (official names) holds."""
    for key, value in backbone_tensors(model).items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('model_class', ['DINOv3ConvNextModel', 'DINOv3ConvNextBackbone'])
def test_transformers_dinov3_files_load_through_every_loader_and_give_transformers_outputs(tmp_path, model_class):
    reference = dinov3_reference(model_class)
    reference.save_pretrained(tmp_path)  # model.safetensors and config.json, as transformers writes them
    path = str(tmp_path / 'model.safetensors')
    from safetensors.torch import load_file
    keys = load_file(path)
    assert {'stages.0.downsample_layers.0.weight', 'stages.2.downsample_layers.1.bias',
            'stages.2.layers.1.depthwise_conv.weight', 'stages.2.layers.1.layer_norm.bias',
            'stages.3.layers.0.pointwise_conv1.weight', 'stages.3.layers.0.pointwise_conv2.bias',
            'stages.1.layers.0.gamma'} <= set(keys)
    assert ('layer_norm.weight' in keys) == (model_class == 'DINOv3ConvNextModel')  # the final norm

    by_init_cfg = ConvNeXt(arch=SMALLEST_ARCH, init_cfg=dict(type='Pretrained', checkpoint=path))
    by_init_cfg.init_weights()
    assert_gives_transformers_outputs(by_init_cfg, reference)
    state = by_init_cfg.state_dict()

    by_mmengine = ConvNeXt(arch=SMALLEST_ARCH)  # load_checkpoint: what load_from and the host tools call
    load_checkpoint(by_mmengine, path, map_location='cpu')
    assert_same_backbone(by_mmengine, state)
    by_torch = ConvNeXt(arch=SMALLEST_ARCH)  # the module's own state dict, model. before the stages
    by_torch.load_state_dict(reference.state_dict(), strict=False)
    assert any(key.startswith('model.stages.') for key in reference.state_dict())
    assert_same_backbone(by_torch, state)


def test_transformers_dinov3_file_with_another_layer_norm_eps_says_what_to_write(tmp_path):
    reference = dinov3_reference('DINOv3ConvNextBackbone', layer_norm_eps=1e-5)
    reference.save_pretrained(tmp_path)
    path = str(tmp_path / 'model.safetensors')
    assert json.loads((tmp_path / 'config.json').read_text())['layer_norm_eps'] == 1e-5
    with pytest.raises(CheckpointError, match=r'model\.safetensors: the weights were trained with LayerNorm eps 1e-05 '
                                              r'\(layer_norm_eps of the config\.json beside them\), the config builds '
                                              r"norm_eps=1e-06\. Write norm_eps=1e-05 in the config's model\.backbone"):
        ConvNeXt(arch=SMALLEST_ARCH, init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()
    model = ConvNeXt(arch=SMALLEST_ARCH, norm_eps=1e-5, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    assert_gives_transformers_outputs(model, reference)


def test_the_layer_norm_eps_changes_the_outputs_so_it_is_checked():
    """1e-4 tells the eps apart where a norm's input has a small spread (here the stem's conv scaled down): the
    same weights match transformers' at its eps, and not at the paper's."""
    reference = dinov3_reference('DINOv3ConvNextBackbone', layer_norm_eps=1e-5)
    with torch.no_grad():
        reference.model.stages[0].downsample_layers[0].weight.mul_(1e-3)
    models = {eps: ConvNeXt(arch=SMALLEST_ARCH, norm_eps=eps) for eps in (1e-5, 1e-6)}
    for model in models.values():
        model.load_state_dict(reference.state_dict(), strict=False)
    assert_gives_transformers_outputs(models[1e-5], reference)
    with pytest.raises(AssertionError, match='Tensor-likes are not close'):
        assert_gives_transformers_outputs(models[1e-6], reference)


def dinov3_original_layout(model):
    """The original DINOv3 release: the official names, the final norm as ``norm`` and again as ``norms.3`` (one
    module registered twice), no head."""
    checkpoint = official_layout(model)['model']
    checkpoint = {k: v for k, v in checkpoint.items() if not k.startswith('head.')}
    checkpoint['norms.3.weight'], checkpoint['norms.3.bias'] = checkpoint['norm.weight'], checkpoint['norm.bias']
    return checkpoint


def timm_dinov3_layout(model):
    """timm's ``convnext_*.dinov3_lvd1689m``: timm's names, the final norm as ``head.norm``, no classifier
    (``num_classes=0``)."""
    return {k: v for k, v in timm_layout(model).items() if not k.startswith('head.fc.')}


@pytest.mark.parametrize('layout', [dinov3_original_layout, timm_dinov3_layout], ids=lambda f: f.__name__)
def test_dinov3_original_and_timm_files_load_exactly_and_give_the_reference_outputs(tmp_path, layout):
    import reference
    source = randomize(ConvNeXt(arch=SMALLEST_ARCH)).eval()
    path = tmp_path / 'dinov3.pth'
    torch.save(layout(source), path)
    model = ConvNeXt(arch=SMALLEST_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert_same_backbone(model, source.state_dict())
    other = ConvNeXt(arch=SMALLEST_ARCH)
    load_checkpoint(other, str(path), map_location='cpu')
    assert_same_backbone(other, source.state_dict())
    model.eval()
    x = torch.randn(2, 3, 70, 97)
    with torch.no_grad():
        # The paper's transcription (DINOv3's ConvNeXt is the paper's architecture) holding the same weights.
        for ours, theirs in zip(model(x), reference.like(model)(x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def open_clip_layout(model, with_mlp_head=False):
    """An open_clip CLIP model's state dict: the image tower in timm's layout under ``visual.trunk.`` (no
    classifier: its final norm only), the projection head (``visual.head.proj`` or, for convnext_large_d's,
    ``visual.head.mlp``), and a text tower."""
    trunk = {'visual.trunk.' + k: v for k, v in timm_layout(model).items() if not k.startswith('head.fc.')}
    dim, embed = model.dims[-1], 16
    head = ({'visual.head.mlp.fc1.weight': torch.randn(dim, dim), 'visual.head.mlp.fc1.bias': torch.zeros(dim),
             'visual.head.mlp.fc2.weight': torch.randn(embed, dim)} if with_mlp_head else
            {'visual.head.proj.weight': torch.randn(embed, dim)})
    text = {'positional_embedding': torch.randn(77, embed), 'token_embedding.weight': torch.randn(100, embed),
            'transformer.resblocks.0.attn.in_proj_weight': torch.randn(3 * embed, embed),
            'ln_final.weight': torch.ones(embed), 'text_projection': torch.randn(embed, embed),
            'logit_scale': torch.tensor(4.6)}
    return {**trunk, **head, **text}


@pytest.mark.parametrize('with_mlp_head', [False, True], ids=['proj_head', 'mlp_head'])
@pytest.mark.parametrize('prefix', [None, 'visual.trunk.'])
def test_open_clip_file_loads_its_image_tower(tmp_path, prefix, with_mlp_head):
    """A CLIP model with eps 1e-5 (as convnext_xxlarge's), shrunk: the tower loads, with or without prefix, and
    gives the paper's transcription's outputs at that eps."""
    import reference
    source = randomize(ConvNeXt(arch=SMALLEST_ARCH, norm_eps=1e-5)).eval()
    path = tmp_path / 'open_clip_pytorch_model.bin'
    torch.save(open_clip_layout(source, with_mlp_head), path)
    model = ConvNeXt(arch=SMALLEST_ARCH, norm_eps=1e-5, init_cfg=dict(
        type='Pretrained', checkpoint=str(path), **({'prefix': prefix} if prefix else {})))
    model.init_weights()
    assert_same_backbone(model, source.state_dict())
    model.eval()
    transcription = reference.like(model)
    for module in transcription.modules():  # the transcription at CLIP XXL's eps
        if hasattr(module, 'eps'):
            module.eps = 1e-5
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(model(x), transcription(x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_timm_clip_file_with_its_mlp_head_loads(tmp_path):
    """timm's ``convnext_large_mlp.clip_*``: timm's names, the head's ``pre_logits.fc`` and ``fc`` left out."""
    source = randomize(ConvNeXt(arch=SMALLEST_ARCH)).eval()
    checkpoint = timm_layout(source)
    checkpoint['head.pre_logits.fc.weight'] = torch.randn(64, 64)
    checkpoint['head.pre_logits.fc.bias'] = torch.zeros(64)
    path = tmp_path / 'clip.pth'
    torch.save(checkpoint, path)
    model = ConvNeXt(arch=SMALLEST_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert_same_backbone(model, source.state_dict())


def test_xxlarge_preset_is_clips_convnext_xxlarge_with_its_eps():
    assert ARCH_SETTINGS['xxlarge'] == dict(depths=[3, 4, 30, 3], dims=[384, 768, 1536, 3072])
    with torch.device('meta'):  # 843M parameters: their shapes only
        model = ConvNeXt(arch='xxlarge')
        same_as_dict = ConvNeXt(arch=dict(ARCH_SETTINGS['xxlarge']))
        paper_eps = ConvNeXt(arch='xxlarge', norm_eps=1e-6)
    assert model.norm_eps == same_as_dict.norm_eps == ARCH_NORM_EPS['xxlarge'] == 1e-5
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert {m.eps for m in paper_eps.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    assert sum(p.numel() for p in model.parameters()) == 843_403_392
    assert model.arch_name() == 'ConvNeXt-xxlarge'
    # layer_wise decay: 30 blocks in stage 2 need 13 layers, above mmpretrain's 12.
    assert model.default_decay_layers() == 13
    assert ConvNeXt(arch=SMALLEST_ARCH).norm_eps == 1e-6


@pytest.mark.parametrize('norm_eps', [0, -1e-6, float('nan'), float('inf'), True, '1e-6'])
def test_bad_norm_eps_says_what_to_write(norm_eps):
    with pytest.raises(ValueError, match=r'norm_eps=.* must be a positive number, the LayerNorm epsilon the weights '
                                         r"were trained with: norm_eps=1e-6 \(the paper's"):
        ConvNeXt(arch=SMALLEST_ARCH, norm_eps=norm_eps)


# The fractions the libraries state (timm's IMAGENET_DEFAULT_* and OPENAI_CLIP_*, transformers' DINOv3 processor).
IMAGENET_FRACTIONS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_FRACTIONS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@pytest.mark.parametrize('family, fractions', [('imagenet', IMAGENET_FRACTIONS), ('dinov3', IMAGENET_FRACTIONS),
                                               ('clip', CLIP_FRACTIONS)])
def test_each_familys_mean_and_std_reach_the_data_preprocessor_of_a_config(tmp_path, family, fractions):
    """A config that adds configs/_base_/weight_families.py to its bases gets the family's normalization into
    mmdet's data preprocessor, the rest of it (type, padding) as the paper's config has it."""
    config = tmp_path / 'config.py'
    config.write_text(f"_base_ = [{osp.join(ROOT, 'configs', 'mask_rcnn', 'convnext_t_3x.py')!r}, "
                      f"{osp.join(ROOT, 'configs', '_base_', 'weight_families.py')!r}]\n"
                      f"model = dict(data_preprocessor={{{{_base_.{family}_preprocessing}}}})\n")
    preprocessor = Config.fromfile(str(config)).model.data_preprocessor
    mean, std = fractions
    assert preprocessor.mean == pytest.approx([255 * m for m in mean], rel=1e-9)
    assert preprocessor.std == pytest.approx([255 * s for s in std], rel=1e-9)
    assert preprocessor.bgr_to_rgb is True
    assert (preprocessor.type, preprocessor.pad_size_divisor) == ('DetDataPreprocessor', 32)
