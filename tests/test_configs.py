"""The paper's configs: each states the official recipe and builds with the paper's parameter count, both read
from docs/results.md; the T and S configs train one step and predict on a tiny image on the CPU, with the
``--cfg-options`` a machine without a GPU needs under mmdet's and mmseg's own tools."""
import glob
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper

from convnext_mm.width_check import check_consumer_widths

import paper_figures
from project import ROOT, config_path
from tiny_models import (assert_every_path_got_a_gradient, build_model, record_gradients_on_every_path,
                         shrink_recipe, tiny_detection_batch, tiny_segmentation_batch)

# configs/NAME -> its cells in docs/results.md: the paper's results and the recipe.
PAPER = paper_figures.by_config()
DETECTION = sorted(name for name, row in PAPER.items() if 'box AP' in row)
SEGMENTATION = sorted(name for name, row in PAPER.items() if 'mIoU (single-scale)' in row)
SMALL_CONFIGS = [name for name in DETECTION + SEGMENTATION if PAPER[name]['arch'] in ('tiny', 'small')]


def load(name):
    return Config.fromfile(config_path(name))


def test_results_has_a_row_and_a_recipe_for_every_paper_config():
    on_disk = {osp.relpath(path, osp.join(ROOT, 'configs')) for task in ('mask_rcnn', 'cascade', 'upernet')
               for path in glob.glob(osp.join(ROOT, 'configs', task, 'convnext_*.py')) if '_iso_' not in path}
    assert set(DETECTION + SEGMENTATION) == on_disk
    for name in on_disk:
        assert {'arch', 'drop path', 'lr', 'decay rate', 'num_layers', 'params'} <= PAPER[name].keys(), name


def check_common_settings(cfg, row):
    backbone = cfg.model.backbone
    assert backbone.type == 'ConvNeXt'
    assert (backbone.arch, backbone.drop_path_rate, backbone.layer_scale_init_value) == (
        row['arch'], float(row['drop path']), 1.0)
    imagenet_file = row['ImageNet file'].split(']')[0].lstrip('[')
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'data/pretrained/{imagenet_file}')
    assert cfg.custom_imports == dict(imports=['convnext_mm'], allow_failed_imports=False)
    optim = cfg.optim_wrapper
    assert optim.type == {'fp16': 'AmpOptimWrapper', 'fp32': 'OptimWrapper'}[row['precision']]
    assert optim.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert optim.optimizer == dict(type='AdamW', lr=float(row['lr']), betas=(0.9, 0.999), weight_decay=0.05)
    paramwise = optim.paramwise_cfg
    assert (paramwise.decay_rate, paramwise.decay_type, paramwise.num_layers) == (
        float(row['decay rate']), row['decay type'], int(row['num_layers']))


@pytest.mark.parametrize('name', DETECTION)
def test_detection_config_states_the_official_settings(name):
    cfg = load(name)
    check_common_settings(cfg, PAPER[name])
    assert cfg.default_scope == 'mmdet' and cfg.data_root == 'data/coco/'
    # 16 images per batch on 8 GPUs, 36 epochs, lr / 10 at epochs 27 and 33 after a 500-iteration warm-up.
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.by_epoch, warmup.end) == ('LinearLR', False, 500)
    assert (steps.type, steps.milestones, steps.gamma, steps.end) == ('MultiStepLR', [27, 33], 0.1, 36)
    # Multi-scale training: short side 480..800 step 32, or 400/500/600 then a 384..600 crop then 480..800.
    choice = cfg.train_dataloader.dataset.pipeline[3]
    scales = [(1333, short_side) for short_side in range(480, 801, 32)]
    assert choice.type == 'RandomChoice'
    assert choice.transforms[0][0].scales == scales
    assert [t.type for t in choice.transforms[1]] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert choice.transforms[1][0].scales == [(1333, 400), (1333, 500), (1333, 600)]
    assert choice.transforms[1][1].crop_size == (384, 600) and choice.transforms[1][2].scales == scales
    assert cfg.test_dataloader.dataset.pipeline[1] == dict(type='Resize', scale=(1333, 800), keep_ratio=True)
    if name.startswith('cascade/'):
        heads = cfg.model.roi_head.bbox_head
        assert [h.bbox_coder.target_stds for h in heads] == [
            [0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
        for head in heads:
            assert (head.type, head.num_shared_convs, head.num_shared_fcs) == ('ConvFCBBoxHead', 4, 1)
            assert head.norm_cfg.type == 'SyncBN' and head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
            assert head.reg_class_agnostic is False and head.reg_decoded_bbox is True


@pytest.mark.parametrize('name', SEGMENTATION)
def test_segmentation_config_states_the_official_settings(name):
    cfg = load(name)
    check_common_settings(cfg, PAPER[name])
    crop = int(PAPER[name]['crop'])
    assert cfg.default_scope == 'mmseg' and cfg.data_root == 'data/ade/ADEChallengeData2016'
    assert cfg.model.pretrained is None
    assert (cfg.model.decode_head.type, cfg.model.decode_head.channels) == ('UPerHead', 512)
    assert cfg.model.decode_head.num_classes == 150
    aux = cfg.model.auxiliary_head
    assert (aux.in_index, aux.num_classes, aux.loss_decode.loss_weight) == (2, 150, 0.4)
    assert cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.train_cfg.max_iters == 160000
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 1500)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == ('PolyLR', 1.0, 0.0, 1500, 160000)
    # Crops, and the sliding-window test at 2/3 of the crop.
    assert cfg.model.data_preprocessor.size == (crop, crop)
    assert cfg.train_dataloader.dataset.pipeline[3].crop_size == (crop, crop)
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(crop, crop), stride=(crop * 2 // 3, ) * 2)
    # Multi-scale plus flip test through mmseg's TTA.
    assert cfg.tta_model.type == 'SegTTAModel'
    resizes, flips = cfg.tta_pipeline[1].transforms[:2]
    assert [t.scale_factor for t in resizes] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [t.prob for t in flips] == [0., 1.]


@pytest.mark.parametrize('name', DETECTION + SEGMENTATION)
def test_config_builds_with_the_paper_parameter_count_and_fitting_widths(name):
    cfg = load(name)
    with torch.device('meta'):  # shapes only: no memory for the XL models' weights
        model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    paper = paper_figures.number(PAPER[name]['params']) * 1e6
    assert abs(params - paper) / paper < 0.01, f'{name}: {params / 1e6:.1f}M parameters, paper {paper / 1e6:.0f}M'
    widths = model.backbone.out_channels
    if cfg.default_scope == 'mmdet':
        assert cfg.model.neck.in_channels == widths
    else:
        assert cfg.model.decode_head.in_channels == widths and cfg.model.auxiliary_head.in_channels == widths[2]


@pytest.mark.parametrize('name', SMALL_CONFIGS)
def test_small_config_trains_a_step_and_predicts_on_the_cpu(name):
    torch.manual_seed(0)
    cfg = load(name)
    # What a machine without a GPU needs under mmdet's and mmseg's own tools (the configs' comment says so).
    cfg.merge_from_dict({'optim_wrapper.type': 'OptimWrapper'})
    if cfg.default_scope == 'mmdet':
        # Few proposals keep the RoI heads cheap on a 64x64 image; the model is the config's.
        cfg.model.train_cfg.rpn_proposal.max_per_img = 8
        cfg.model.test_cfg.rpn.max_per_img = 8
        batch = tiny_detection_batch()
    else:
        cfg.model.data_preprocessor.size = (64, 64)  # train on the tiny image itself, not padded to the crop
        batch = tiny_segmentation_batch()
    model = build_model(cfg).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(optim_wrapper) is OptimWrapper  # the config's fp16 AMP runs in fp32 on the CPU
    gradients = record_gradients_on_every_path(model.backbone)
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(math.isfinite(float(value)) for value in losses.values()), losses
    assert_every_path_got_a_gradient(gradients)

    model.eval()
    with torch.no_grad():
        predictions = model.test_step(batch)
    assert len(predictions) == len(batch['inputs'])
    if cfg.default_scope == 'mmdet':
        instances = predictions[0].pred_instances
        assert instances.bboxes.shape[1] == 4 and len(instances.scores) == len(instances.labels) == len(instances)
        assert tuple(instances.masks.shape[1:]) == (64, 64)
    else:
        for prediction in predictions:
            labels = prediction.pred_sem_seg.data
            assert labels.shape == (1, 64, 64) and 0 <= labels.min() and labels.max() < 150


# ConvNeXt V2 recipes: configs/convnext_v2/, each stating its source; no result of this repository's own.
V2_MASK_RCNN = 'convnext_v2/mask_rcnn_convnext_v2_b_fcmae_lsj_3x.py'


def test_v2_mask_rcnn_config_states_mmdets_project_recipe_and_source():
    cfg = load(V2_MASK_RCNN)
    with open(config_path(V2_MASK_RCNN)) as f:
        text = f.read()
    assert 'projects/ConvNeXt-V2' in text and '52.9 box AP, 46.4 mask AP' in text
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.use_grn, backbone.layer_scale_init_value,
            backbone.drop_path_rate) == ('ConvNeXt', 'base', True, 0., 0.4)
    assert backbone.init_cfg.checkpoint.endswith('convnext-v2-base_3rdparty-fcmae_in1k_20230104-8a798eaf.pth')
    assert cfg.model.neck.in_channels == [128, 256, 512, 1024]
    assert cfg.model.test_cfg.rcnn.nms.type == 'soft_nms'
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 32
    resize, crop = cfg.train_dataloader.dataset.pipeline[2:4]
    assert (resize.type, resize.scale, resize.ratio_range) == ('RandomResize', (1024, 1024), (0.1, 2.0))
    assert (crop.type, crop.crop_size) == ('RandomCrop', (1024, 1024))
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert (warmup.end, steps.milestones) == (1000, [27, 33])
    optim = cfg.optim_wrapper
    assert optim.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert optim.paramwise_cfg == dict(decay_rate=0.95, decay_type='layer_wise', num_layers=12)
    # What every recipe here declares (configs/_base_/convnext_runtime.py).
    assert cfg.custom_imports == dict(imports=['convnext_mm'], allow_failed_imports=False)
    assert {hook.type for hook in cfg.custom_hooks} >= {
        'RandomStateHook', 'SafeCheckpointHook', 'BackboneWidthCheckHook'}
    assert cfg.default_hooks.checkpoint.backend_args == dict(backend='atomic_local')


@pytest.mark.slow  # a V2-B Mask R-CNN's training step
def test_v2_mask_rcnn_config_trains_a_step_on_the_cpu_without_weight_decay_on_grn():
    torch.manual_seed(0)
    cfg = load(V2_MASK_RCNN)
    cfg.merge_from_dict({'optim_wrapper.type': 'OptimWrapper'})  # what a machine without a GPU needs
    cfg.model.train_cfg.rpn_proposal.max_per_img = 8
    model = build_model(cfg).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    grn = {id(param) for name, param in model.backbone.named_parameters() if '.grn.' in name}
    assert len(grn) == 2 * sum(model.backbone.depths)
    decays = {id(param): group['weight_decay'] for group in optim_wrapper.optimizer.param_groups
              for param in group['params']}
    assert {decays[key] for key in grn} == {0.0}  # GRN's gamma and beta, as the ConvNeXt V2 authors train
    assert decays[id(model.backbone.stages[2][0].pwconv1.weight)] == 0.05
    gradients = record_gradients_on_every_path(model.backbone)
    losses = model.train_step(tiny_detection_batch(), optim_wrapper)
    assert losses and all(math.isfinite(float(value)) for value in losses.values()), losses
    assert_every_path_got_a_gradient(gradients)


# ---- Recipes beyond the paper's: DeepLabV3+ at output stride 16, the families users pair ConvNeXt with (DINO,
# Mask2Former, RetinaNet) and the ConvNeXt V2 recipes. Each is a row of docs/results.md's recipe table (its first
# cell links the config, 'params here' its parameter count) and states its sources in its header.
RECIPE_DIRS = ('deeplabv3plus', 'dino', 'mask2former', 'retinanet', 'convnext_v2')
RECIPES = sorted(name for name, row in PAPER.items() if 'recipe' in row and name.startswith(RECIPE_DIRS))


def test_results_has_a_row_for_every_recipe_config():
    on_disk = {osp.relpath(path, osp.join(ROOT, 'configs')) for folder in RECIPE_DIRS
               for path in glob.glob(osp.join(ROOT, 'configs', folder, '*.py'))}
    assert set(RECIPES) == on_disk


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_config_states_its_sources_and_builds_with_the_documented_parameter_count(name):
    with open(config_path(name)) as f:
        header = f.read().split('"""')[1]
    assert 'Source' in header and 'this repository has' in header.replace('\n', ' ').lower(), name
    cfg = load(name)
    assert cfg.custom_imports.imports[-1] == 'convnext_mm' and cfg.custom_imports.allow_failed_imports is False
    runtime = Config.fromfile(config_path('_base_/convnext_runtime.py'))
    assert [hook.type for hook in cfg.custom_hooks] == [hook['type'] for hook in runtime.custom_hooks]
    assert cfg.default_hooks.checkpoint.backend_args == dict(backend='atomic_local')
    with torch.device('meta'):
        model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    documented = paper_figures.number(PAPER[name]['params here']) * 1e6
    assert abs(params - documented) < 0.05e6, f'{name}: {params / 1e6:.2f}M parameters, docs {documented / 1e6}M'
    check_consumer_widths(model)  # the necks and heads read the backbone's widths
    backbone = cfg.model.backbone
    assert backbone.init_cfg.checkpoint.startswith('data/pretrained/')
    assert model.backbone.use_grn == name.startswith('convnext_v2/')
    strides = {16: [4, 8, 16, 16], 32: [4, 8, 16, 32]}[backbone.get('output_stride', 32)]
    assert ('_os16_' in name) == (backbone.get('output_stride') == 16)
    assert model.backbone.out_strides == [strides[i] for i in backbone.out_indices]


@pytest.mark.parametrize('name', [name for name in RECIPES if 'mask_rcnn' not in name])  # its own test, slow
def test_recipe_config_trains_a_step_and_predicts_shrunk_on_the_cpu(name):
    """The config with a tiny model (tests/tiny_models.py's shrink_recipe) and its own optimizer settings: one
    training step, every backbone path with a gradient, no weight decay on GRN's gamma and beta, predictions."""
    torch.manual_seed(0)
    cfg = shrink_recipe(load(name))
    cfg.merge_from_dict({'optim_wrapper.type': 'OptimWrapper'})  # what a machine without a GPU needs
    batch = tiny_detection_batch() if cfg.default_scope == 'mmdet' else tiny_segmentation_batch()
    model = build_model(cfg).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decays = {id(param): group['weight_decay'] for group in optim_wrapper.optimizer.param_groups
              for param in group['params']}
    grn = [param for param_name, param in model.backbone.named_parameters() if '.grn.' in param_name]
    assert len(grn) == (2 * sum(model.backbone.depths) if model.backbone.use_grn else 0)
    assert {decays[id(param)] for param in grn} <= {0.0}  # as the ConvNeXt V2 authors train
    assert decays[id(model.backbone.stages[2][0].pwconv1.weight)] == cfg.optim_wrapper.optimizer.weight_decay > 0
    gradients = record_gradients_on_every_path(model.backbone)
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(math.isfinite(float(value)) for value in losses.values()), losses
    assert_every_path_got_a_gradient(gradients)

    model.eval()
    with torch.no_grad():
        predictions = model.test_step(batch)
    assert len(predictions) == len(batch['inputs'])
    if cfg.default_scope == 'mmdet':
        instances = predictions[0].pred_instances
        assert instances.bboxes.shape[1] == 4 and len(instances.scores) == len(instances.labels) == len(instances)
    else:
        for prediction in predictions:
            labels = prediction.pred_sem_seg.data
            assert labels.shape == (1, 64, 64) and 0 <= labels.min() and labels.max() < 150
