"""The paper's configs: each builds with the paper's parameter count and states the official hyper-parameters;
the T and S configs train one step and predict on a tiny image on the CPU."""
import math

import pytest
import torch
from mmengine.optim import OptimWrapper, build_optim_wrapper

from convnext_mm import runtime
from convnext_mm.runtime import build_model, load_config
from project import config_path
from tiny_models import (assert_every_path_got_a_gradient, record_gradients_on_every_path, tiny_detection_batch,
                         tiny_segmentation_batch)

DIMS = {'tiny': [96, 192, 384, 768], 'small': [96, 192, 384, 768], 'base': [128, 256, 512, 1024],
        'large': [192, 384, 768, 1536], 'xlarge': [256, 512, 1024, 2048]}

# The official release's settings: config -> arch, drop path, lr, decay rate, num_layers, fp16 AMP,
# whole-model parameters in the paper (M), ImageNet checkpoint.
DETECTION = {
    'mask_rcnn/convnext_t_3x.py': ('tiny', 0.4, 1e-4, 0.95, 6, True, 48, 'convnext_tiny_1k_224.pth'),
    'cascade/convnext_t_3x.py': ('tiny', 0.4, 2e-4, 0.7, 6, True, 86, 'convnext_tiny_1k_224.pth'),
    'cascade/convnext_s_3x.py': ('small', 0.6, 2e-4, 0.7, 12, True, 108, 'convnext_small_1k_224.pth'),
    'cascade/convnext_b_3x.py': ('base', 0.7, 2e-4, 0.8, 12, True, 146, 'convnext_base_1k_224.pth'),
    'cascade/convnext_b_in22k_3x.py': ('base', 0.6, 1e-4, 0.8, 12, True, 146, 'convnext_base_22k_224.pth'),
    'cascade/convnext_l_in22k_3x.py': ('large', 0.7, 1e-4, 0.7, 12, False, 255, 'convnext_large_22k_224.pth'),
    'cascade/convnext_xl_in22k_3x.py': ('xlarge', 0.8, 1e-4, 0.7, 12, False, 407, 'convnext_xlarge_22k_224.pth'),
}
SEGMENTATION = {  # ... plus the crop size
    'upernet/convnext_t_512_160k_ade20k.py': ('tiny', 0.4, 1e-4, 0.9, 6, True, 60, 'convnext_tiny_1k_224.pth', 512),
    'upernet/convnext_s_512_160k_ade20k.py': ('small', 0.3, 1e-4, 0.9, 12, True, 82, 'convnext_small_1k_224.pth',
                                              512),
    'upernet/convnext_b_512_160k_ade20k.py': ('base', 0.4, 1e-4, 0.9, 12, True, 122, 'convnext_base_1k_224.pth',
                                              512),
    'upernet/convnext_b_in22k_640_160k_ade20k.py': ('base', 0.4, 1e-4, 0.9, 12, True, 122,
                                                    'convnext_base_22k_224.pth', 640),
    'upernet/convnext_l_in22k_640_160k_ade20k.py': ('large', 0.4, 1e-4, 0.9, 12, False, 235,
                                                    'convnext_large_22k_224.pth', 640),
    'upernet/convnext_xl_in22k_640_160k_ade20k.py': ('xlarge', 0.4, 8e-5, 0.9, 12, False, 391,
                                                     'convnext_xlarge_22k_224.pth', 640),
}
ALL_CONFIGS = {**DETECTION, **SEGMENTATION}
SMALL_CONFIGS = [name for name, settings in ALL_CONFIGS.items() if settings[0] in ('tiny', 'small')]


def check_common_settings(cfg, settings):
    arch, drop_path, lr, decay_rate, num_layers, amp, _, pretrained = settings[:8]
    backbone = cfg.model.backbone
    assert backbone.type == 'ConvNeXt'
    assert (backbone.arch, backbone.drop_path_rate, backbone.layer_scale_init_value) == (arch, drop_path, 1.0)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'data/pretrained/{pretrained}')
    assert cfg.custom_imports == dict(imports=['convnext_mm'], allow_failed_imports=False)
    optim = cfg.optim_wrapper
    assert optim.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert optim.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert optim.optimizer == dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    assert (optim.paramwise_cfg.decay_rate, optim.paramwise_cfg.num_layers) == (decay_rate, num_layers)


@pytest.mark.parametrize('name', DETECTION)
def test_detection_config_states_the_official_settings(name):
    cfg = load_config(config_path(name))
    check_common_settings(cfg, DETECTION[name])
    assert cfg.default_scope == 'mmdet' and cfg.data_root == 'data/coco/'
    assert cfg.model.neck.in_channels == DIMS[cfg.model.backbone.arch]
    assert cfg.optim_wrapper.paramwise_cfg.decay_type == 'layer_wise'
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
    cfg = load_config(config_path(name))
    settings = SEGMENTATION[name]
    check_common_settings(cfg, settings)
    crop = settings[8]
    assert cfg.default_scope == 'mmseg' and cfg.data_root == 'data/ade/ADEChallengeData2016'
    dims = DIMS[cfg.model.backbone.arch]
    assert cfg.model.pretrained is None
    assert (cfg.model.decode_head.type, cfg.model.decode_head.channels) == ('UPerHead', 512)
    assert cfg.model.decode_head.in_channels == dims and cfg.model.decode_head.num_classes == 150
    aux = cfg.model.auxiliary_head
    assert (aux.in_channels, aux.in_index, aux.num_classes, aux.loss_decode.loss_weight) == (dims[2], 2, 150, 0.4)
    assert cfg.optim_wrapper.paramwise_cfg.decay_type == 'stage_wise'
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


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_builds_with_the_paper_parameter_count(name):
    cfg = load_config(config_path(name))
    params = sum(p.numel() for p in build_model(cfg).parameters())
    paper = ALL_CONFIGS[name][6] * 1e6
    assert abs(params - paper) / paper < 0.01, f'{name}: {params / 1e6:.1f}M parameters, paper {paper / 1e6:.0f}M'


@pytest.mark.parametrize('name', SMALL_CONFIGS)
def test_small_config_trains_a_step_and_predicts_on_the_cpu(name, monkeypatch):
    monkeypatch.setattr(runtime, 'cuda_available', lambda: False)  # the CPU path, also on a machine with a GPU
    torch.manual_seed(0)
    cfg = load_config(config_path(name))
    if cfg.default_scope == 'mmdet':
        # Few proposals keep the RoI heads cheap on a 64x64 image; the model is the config's.
        cfg.model.train_cfg.rpn_proposal.max_per_img = 8
        cfg.model.test_cfg.rpn.max_per_img = 8
        batch = tiny_detection_batch()
    else:
        cfg.model.data_preprocessor.size = (64, 64)  # train on the tiny image itself, not padded to the crop
        batch = tiny_segmentation_batch()
    runtime.fit_config_to_machine(cfg, distributed=False)
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
