"""A drop-in for the ConvNeXt configs users already own: the 9 configs that mmdet 3.3 and mmseg 1.2 ship for
``mmpretrain.ConvNeXt`` (read from the installed packages), with two edits only, build, train a step on the CPU and
get the official lr scale for every backbone parameter from the host library's own
LearningRateDecayOptimizerConstructor. Also the families users pair ConvNeXt with (RetinaNet, FCOS, DINO,
Mask2Former, DeepLabV3+), from mmdet's and mmseg's own configs with our backbone swapped in."""
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.utils import import_modules_from_strings

from convnext_mm import ConvNeXt
from convnext_mm.backbone import ARCH_SETTINGS

from checkpoint_layouts import mmpretrain_layout
from layer_decay_tables import CONVNEXT_S_LAYER_WISE_IDS, CONVNEXT_T_LAYER_WISE_IDS, stage_wise_ids
from project import host_file, load_tool
import config_utils as runtime  # tools/config_utils.py, on sys.path through project
from config_utils import build_model
from tiny_models import randomize, tiny_detection_batch, tiny_segmentation_batch


def package_config(library, name):
    """A config file shipped inside the installed mmdet or mmseg package."""
    return host_file(library, 'configs', name)


# config -> (arch, decay_type, decay_rate, num_layers, base lr), as the files state them.
SHIPPED = {
    ('mmdet', 'convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'): ('tiny', 'layer_wise', 0.95, 6, 1e-4),
    ('mmdet', 'convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'): (
        'tiny', 'layer_wise', 0.7, 6, 2e-4),
    ('mmdet', 'convnext/cascade-mask-rcnn_convnext-s-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'): (
        'small', 'layer_wise', 0.7, 12, 2e-4),
    ('mmseg', 'convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'): ('tiny', 'stage_wise', 0.9, 6, 1e-4),
    ('mmseg', 'convnext/convnext-small_upernet_8xb2-amp-160k_ade20k-512x512.py'): ('small', 'stage_wise', 0.9, 12,
                                                                                  1e-4),
    ('mmseg', 'convnext/convnext-base_upernet_8xb2-amp-160k_ade20k-512x512.py'): ('base', 'stage_wise', 0.9, 12, 1e-4),
    ('mmseg', 'convnext/convnext-base_upernet_8xb2-amp-160k_ade20k-640x640.py'): ('base', 'stage_wise', 0.9, 12, 1e-4),
    ('mmseg', 'convnext/convnext-large_upernet_8xb2-amp-160k_ade20k-640x640.py'): ('large', 'stage_wise', 0.9, 12,
                                                                                  1e-4),
    ('mmseg', 'convnext/convnext-xlarge_upernet_8xb2-amp-160k_ade20k-640x640.py'): ('xlarge', 'stage_wise', 0.9, 12,
                                                                                   8e-5),
}


def with_the_two_edits(library, name):
    """The shipped config as a user migrates it: ``custom_imports`` names convnext_mm, the backbone type is
    'ConvNeXt'. Nothing else changes (the file's own custom_imports, mmpretrain, is not importable here)."""
    cfg = Config.fromfile(package_config(library, name), import_custom_modules=False)
    assert cfg.model.backbone.type == 'mmpretrain.ConvNeXt'
    cfg.custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)
    cfg.model.backbone.type = 'ConvNeXt'
    import_modules_from_strings(**cfg.custom_imports)
    cfg.default_scope = library
    return cfg


def official_ids(arch, decay_type, num_layers):
    """The official layer id of each backbone parameter-name prefix (tests/layer_decay_tables.py)."""
    if decay_type == 'stage_wise':
        table = stage_wise_ids(num_layers)
    else:
        table = CONVNEXT_T_LAYER_WISE_IDS if arch == 'tiny' else CONVNEXT_S_LAYER_WISE_IDS
    return {prefix: layer_id for prefix, layer_id in table.items() if prefix.startswith('backbone.')}


def assert_official_scales(model, optim_wrapper, arch, decay_type, rate, num_layers, base_lr):
    group_of = {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    ids = official_ids(arch, decay_type, num_layers)
    checked = 0
    for name, param in model.named_parameters():
        if not name.startswith('backbone.'):
            continue
        prefixes = [prefix for prefix in ids if name.startswith(prefix)]
        assert len(prefixes) == 1, (name, prefixes)
        layer_id = ids[prefixes[0]]
        group = group_of[id(param)]
        # lr = base_lr * rate ** (num_layers + 2 - layer_id - 1); no weight decay for 1-D tensors and biases.
        assert group['lr'] == pytest.approx(base_lr * rate**(num_layers + 1 - layer_id), rel=1e-9), name
        assert group['weight_decay'] == (0 if param.ndim == 1 or name.endswith('.bias') else 0.05), name
        checked += 1
    assert checked == len(list(model.backbone.parameters()))


def train_one_step(model, cfg, batch):
    """One training step through the host's ``train_step``, whose update of the backbone's first and last weights
    (the stem's and the last downsample layer's convs, on every image's path) is exactly AdamW's first step on their
    gradient (caught on its way, as the optimizer wrapper zeroes it after its step) with their param group's lr and
    weight decay: the gradient reached both ends of the backbone and the step applied the constructor's lr."""
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(optim_wrapper.optimizer) is torch.optim.AdamW
    ends = dict(first=model.backbone.downsample_layers[0][0].weight, last=model.backbone.downsample_layers[3][1].weight)
    grads, before = {}, {name: param.detach().clone() for name, param in ends.items()}
    for name, param in ends.items():
        param.register_hook(lambda grad, name=name: grads.__setitem__(name, grad.clone()))
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(math.isfinite(float(value)) for value in losses.values()), losses
    group_of = {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    for name, param in ends.items():
        grad, group = grads[name], group_of[id(param)]
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, name
        # AdamW's first step: decoupled decay, then lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps).
        expected = before[name] * (1 - group['lr'] * group['weight_decay']) - group['lr'] * grad / (
            grad.abs() + group['eps'])
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=2e-8, msg=name)
    return optim_wrapper


@pytest.mark.parametrize('library, name', list(SHIPPED), ids=[osp.basename(name) for _, name in SHIPPED])
def test_shipped_config_with_two_edits_builds_trains_and_decays_officially(library, name, monkeypatch):
    monkeypatch.setattr(runtime, 'cuda_available', lambda: False)  # the CPU path, also on a machine with a GPU
    arch, decay_type, rate, num_layers, base_lr = SHIPPED[(library, name)]
    cfg = with_the_two_edits(library, name)
    assert cfg.optim_wrapper.constructor == 'LearningRateDecayOptimizerConstructor'  # the host's own
    assert cfg.optim_wrapper.paramwise_cfg == dict(decay_rate=rate, decay_type=decay_type, num_layers=num_layers)
    runtime.fit_config_to_machine(cfg, distributed=False)  # fp16 AMP -> fp32: AmpOptimWrapper needs a GPU
    if library == 'mmdet':
        cfg.model.train_cfg.rpn_proposal.max_per_img = 8
        batch = tiny_detection_batch()
    else:
        cfg.model.data_preprocessor.size = (64, 64)  # train on the tiny image itself, not padded to the crop
        batch = tiny_segmentation_batch()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert isinstance(model.backbone, ConvNeXt)
    assert dict(depths=model.backbone.depths, dims=model.backbone.dims) == ARCH_SETTINGS[arch]
    optim_wrapper = train_one_step(model, cfg, batch)
    assert type(optim_wrapper) is OptimWrapper
    assert_official_scales(model, optim_wrapper, arch, decay_type, rate, num_layers, base_lr)


def test_shipped_config_loads_its_pretrained_file_with_prefix(tmp_path):
    """mmdet's Mask R-CNN config names an mmpretrain file with prefix='backbone.': every backbone tensor loads."""
    source = randomize(ConvNeXt(arch='tiny'))
    path = tmp_path / 'convnext-tiny_3rdparty_32xb128-noema_in1k.pth'
    torch.save(mmpretrain_layout(source), path)
    cfg = with_the_two_edits('mmdet', 'convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py')
    assert cfg.model.backbone.init_cfg.prefix == 'backbone.'
    cfg.model.backbone.init_cfg.checkpoint = str(path)  # the config's URL, downloaded
    model = build_model(cfg)
    model.init_weights()
    loaded = model.backbone.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith(('norm0', 'norm1', 'norm2')):
            continue  # mmpretrain's file holds norm3 only
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_train_refuses_decay_settings_that_no_constructor_reads(tmp_path):
    """A user who swaps the host's constructor for mmengine's default keeps paramwise_cfg's decay_rate: every
    layer would silently train at the full learning rate."""
    train = load_tool('train')
    config = tmp_path / 'my_mask_rcnn.py'  # the shipped config with the two edits, as a user's config inherits it
    config.write_text(
        f"_base_ = [{package_config('mmdet', 'convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py')!r}]\n"
        "custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(type='ConvNeXt'))\n")
    args = train.parse_args([str(config), '--cfg-options', 'optim_wrapper.constructor=DefaultOptimWrapperConstructor'])
    with pytest.raises(SystemExit, match=r"error: optim_wrapper.paramwise_cfg sets \['decay_rate', 'decay_type', "
                                         r"'num_layers'\], which DefaultOptimWrapperConstructor ignores"):
        train.build_config(args)


@pytest.mark.parametrize('argument, value, message', [
    ('gap_before_final_norm', True, 'Write gap_before_final_norm=False or delete it'),
    ('norm_cfg', dict(type='BN'), r"with norm_cfg=\{'type': 'LN2d', 'eps': 1e-06\}. Delete norm_cfg"),
    ('norm_cfg', dict(type='LN2d'), 'Delete norm_cfg'),  # mmpretrain's LN2d without eps is eps=1e-5
    ('act_cfg', dict(type='ReLU'), 'Delete act_cfg'),
    ('stem_patch_size', 8, 'Delete stem_patch_size'),
])
def test_mmpretrain_arguments_that_change_the_model_are_refused(argument, value, message):
    with pytest.raises(ValueError, match=rf'ConvNeXt: {argument}=.* is not supported: .*{message}'):
        ConvNeXt(arch='atto', **{argument: value})


def test_mmpretrain_arguments_of_the_paper_model_are_accepted():
    reference = ConvNeXt(arch='atto').state_dict()
    model = ConvNeXt(arch='atto', gap_before_final_norm=False, linear_pw_conv=False,
                     norm_cfg=dict(type='LN2d', eps=1e-6), act_cfg=dict(type='GELU'), stem_patch_size=4)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.items()}


# --------------------------------------------------------------------------- other families, our backbone swapped in
CONVNEXT_T_DIMS = ARCH_SETTINGS['tiny']['dims']


def retinanet(cfg):
    cfg.model.neck.update(in_channels=CONVNEXT_T_DIMS[1:], start_level=0)
    return (1, 2, 3)


# Each adapts the config's neck or head to ConvNeXt-T's widths (as mmdet's Swin variants of these configs do) and
# returns the backbone's out_indices. Counts the test image cannot feed shrink: a 64x64 image has 85 DINO tokens
# (900 queries) and 4096 pixels (12544 Mask2Former points).
def dino(cfg):
    cfg.model.neck.in_channels = CONVNEXT_T_DIMS[1:]
    cfg.model.num_queries = 30
    return (1, 2, 3)


def mask2former_det(cfg):
    cfg.model.panoptic_head.in_channels = CONVNEXT_T_DIMS
    cfg.model.data_preprocessor.batch_augments = None  # it pads every image to 1024x1024
    cfg.model.train_cfg.num_points = 1024
    return (0, 1, 2, 3)


def mask2former_seg(cfg):
    cfg.model.decode_head.in_channels = CONVNEXT_T_DIMS
    cfg.model.decode_head.train_cfg.num_points = 1024
    return (0, 1, 2, 3)


def deeplabv3plus(cfg):
    cfg.model.decode_head.update(in_channels=CONVNEXT_T_DIMS[3], c1_in_channels=CONVNEXT_T_DIMS[0])
    cfg.model.auxiliary_head.in_channels = CONVNEXT_T_DIMS[2]
    return (0, 1, 2, 3)


FAMILIES = {
    'retinanet': ('mmdet', 'retinanet/retinanet_r50_fpn_1x_coco.py', retinanet),
    'fcos': ('mmdet', 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', retinanet),
    'dino': ('mmdet', 'dino/dino-4scale_r50_8xb2-12e_coco.py', dino),
    'mask2former_mmdet': ('mmdet', 'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', mask2former_det),
    'mask2former_mmseg': ('mmseg', 'mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py', mask2former_seg),
    'deeplabv3plus': ('mmseg', 'deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py', deeplabv3plus),
}


@pytest.mark.parametrize('family', FAMILIES)
def test_other_families_train_and_predict_with_convnext(family):
    library, name, adapt = FAMILIES[family]
    cfg = Config.fromfile(package_config(library, name))
    cfg.default_scope = library
    out_indices = adapt(cfg)
    cfg.model.backbone = dict(type='ConvNeXt', arch='tiny', out_indices=out_indices, drop_path_rate=0.1)
    # The config's own data preprocessor normalizes; caffe-style configs (FCOS) only change mean/std.
    torch.manual_seed(0)  # fixed images: DINO at random init meets a NaN matching cost on 1 random batch in 16
    if library == 'mmseg':
        cfg.model.data_preprocessor.size = (64, 64)
        batch = tiny_segmentation_batch()
    else:
        batch = tiny_detection_batch()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    cfg.optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))
    train_one_step(model, cfg, batch)
    model.eval()
    with torch.no_grad():
        predictions = model.test_step(batch)
    assert len(predictions) == len(batch['inputs'])
    if library == 'mmdet':
        instances = predictions[0].pred_instances
        assert instances.bboxes.shape[1] == 4 and len(instances.scores) == len(instances.labels) == len(instances)
    else:
        for prediction in predictions:
            assert prediction.pred_sem_seg.data.shape == (1, 64, 64)
