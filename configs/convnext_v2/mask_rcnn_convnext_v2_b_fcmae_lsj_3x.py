"""Mask R-CNN, ConvNeXt V2-B pre-trained by FCMAE on ImageNet-1K, large-scale jitter (LSJ) at 1024, 3x on COCO.

Source: mmdet's projects/ConvNeXt-V2 (configs/mask-rcnn_convnext-v2-b_fpn_lsj-3x-fcmae_coco.py), published there as
52.9 box AP, 46.4 mask AP (8 GPUs x 4 images, fp16 AMP; a "pre-release": the ConvNeXt V2 authors have not published
their detection fine-tuning settings, and its drop path rate and layer decay are marked unverified). The same
recipe with convnext_mm's ConvNeXt in place of mmpretrain's: no layer scale (GRN instead), layer-wise lr decay 0.95
over 12 layers, soft-NMS in the box head's test. No weight decay on GRN's gamma and beta (1-D parameters), as the
ConvNeXt V2 authors train. This repository has no result of its own for this config.

Weights: mmpretrain's convnext-v2-base_3rdparty-fcmae_in1k_20230104-8a798eaf.pth (download.openmmlab.com/
mmclassification/v0/convnext-v2/) in data/pretrained/; the official FCMAE file (convnextv2_base_1k_224_fcmae.pt)
loads too. Data: mmdet's COCO layout under data/coco/. On a CPU: --cfg-options optim_wrapper.type=OptimWrapper.
"""
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/convnext_runtime.py',
]
image_size = (1024, 1024)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=0.,  # GRN replaces layer scale
        use_grn=True,
        init_cfg=dict(type='Pretrained',
                      checkpoint='data/pretrained/convnext-v2-base_3rdparty-fcmae_in1k_20230104-8a798eaf.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]),
    test_cfg=dict(rpn=dict(nms=dict(type='nms')), rcnn=dict(nms=dict(type='soft_nms'))))

# LSJ: resize by 0.1-2.0 of 1024, crop 1024x1024.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size, recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=8, dataset=dict(pipeline=train_pipeline))  # 8 GPUs x 4 images
auto_scale_lr = dict(enable=False, base_batch_size=32)

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]

optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=12),
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))

# Checkpoints written atomically (convnext_runtime.py); the source's keeps the last one only.
default_hooks = dict(checkpoint=dict(max_keep_ckpts=1, backend_args=dict(backend='atomic_local')))
