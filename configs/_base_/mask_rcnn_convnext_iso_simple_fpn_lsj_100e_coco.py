"""Mask R-CNN with an isotropic ConvNeXt and ViTDet's simple feature pyramid on COCO: ViTDet's recipe for plain
backbones, as mmdet 3.x's projects/ViTDet configs state it (vitdet_mask-rcnn_vit-b-mae_lsj-100e.py and
lsj-100e_coco-instance.py), with the ConvNeXt blocks in place of ViT's.

The paper gives no detection recipe for its isotropic models (it reports them on ImageNet only), so none of the
numbers here are the paper's. Taken from ViTDet: large-scale jitter at 1024x1024 (random resize 0.1-2.0, 1024 crop,
pad to 1024 with 114), 64 images per iteration (e.g. 16 GPUs x 4, auto_scale_lr base 64), 184375 iterations
(100 epochs) with the lr divided by 10 at 163889 and 177546 (88 and 96 epochs) after a 250-iteration linear
warm-up, AdamW (lr 1e-4, weight decay 0.1) with layer-wise lr decay and fp16 AMP; the simple pyramid (strides 4-32
from the stride-16 map, plus a stride-64 level for the RPN), a 2-conv RPN head, a 4-conv-1-fc box head and the
mask head with LayerNorm after their convs. Not taken: ViT's window/global attention and relative positions
(nothing to carry over), ViTDet's fp16 gradient-compression hook (a DDP communication saving only). Ours, not
tuned: the layer decay rate (each size's config) over 18 block ids plus stem, neck and heads.

Data: mmdet's layout under data/coco/ (annotations/instances_{train,val}2017.json, train2017/, val2017/);
elsewhere: --cfg-options data_root=PATH.
"""
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/default_runtime.py',
    './convnext_runtime.py',
]

image_size = (1024, 1024)
# ViTDet's norm after every conv of the neck and heads: a channels-first LayerNorm (eps as detectron2's).
norm_cfg = dict(type='ConvNeXtLayerNorm2d', eps=1e-6)
model = dict(
    data_preprocessor=dict(
        pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]),
    backbone=dict(
        _delete_=True,
        type='ConvNeXtIsotropic',
        out_indices=(-1, ),  # ViTDet: the pyramid comes from the last block's map only
        init_cfg=dict(type='Pretrained')),
    neck=dict(
        _delete_=True,
        type='SimpleFeaturePyramid',
        out_channels=256,
        num_outs=5,
        norm_cfg=norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size, recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=4, num_workers=8, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='AmpOptimWrapper',  # fp32 on a CPU: --cfg-options optim_wrapper.type=OptimWrapper (tools/train.py does it)
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_type='layer_wise', num_layers=18),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1))

# 100 epochs = 184375 iterations x 64 images / 118k images per epoch.
max_iters = 184375
interval = 5000
train_cfg = dict(
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=interval,
    dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)])
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[163889, 177546], gamma=0.1),
]
# Checkpoints written atomically (convnext_runtime.py).
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, save_last=True, interval=interval, max_keep_ckpts=5,
                    backend_args=dict(backend='atomic_local')))
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
auto_scale_lr = dict(base_batch_size=64)
