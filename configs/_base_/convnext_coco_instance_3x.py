"""COCO instance segmentation recipe of the ConvNeXt detectors ("3x" schedule of the official release).

16 images per batch (8 GPUs x 2, mmdet's base loader), AdamW with layer-wise lr decay and fp16 AMP, 36 epochs
with the lr divided by 10 at epochs 27 and 33 after a 500-iteration linear warm-up; multi-scale training with
random crops; single-scale test at 1333x800. The model comes from the config that inherits this file; each
size's config sets its lr, decay rate and num_layers.

Data: mmdet's layout under data/coco/ (annotations/instances_{train,val}2017.json, train2017/, val2017/);
elsewhere: --cfg-options data_root=PATH.
"""
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './convnext_runtime.py',
]
# Checkpoints written atomically (convnext_runtime.py).
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='atomic_local')))

# Short side 480, 512, ..., 800 with the long side at most 1333.
multi_scale_sizes = [(1333, short_side) for short_side in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scale_sizes, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(1333, 400), (1333, 500), (1333, 600)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scale_sizes, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]

# The paper's fp16 AMP needs a CUDA GPU. On a CPU: --cfg-options optim_wrapper.type=OptimWrapper (fp32), which
# this repository's tools/train.py applies itself and logs.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_type='layer_wise'),
    optimizer=dict(_delete_=True, type='AdamW', betas=(0.9, 0.999), weight_decay=0.05))
