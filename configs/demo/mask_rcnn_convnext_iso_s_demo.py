"""Demo: Mask R-CNN with the isotropic ConvNeXt-S and ViTDet's simple pyramid (configs/mask_rcnn/
convnext_iso_s_lsj_100e.py) from scratch on the generated shapes, with the data, classes and schedule of
configs/demo/cascade_convnext_t_demo.py (see its docstring); about five minutes on two CPU cores.

The model is the config's; what changes: the demo data at its own size (no large-scale jitter, no padding to
1024), two epochs from random initialization in fp32, fewer proposals and sampled RoIs. Its stride-16 maps are only
8 to 10 pixels a side on these 128-160 pixel images, so expect far lower figures than the hierarchical ConvNeXt's
demo: this shows the model trains and evaluates, not what it reaches.
"""
_base_ = '../mask_rcnn/convnext_iso_s_lsj_100e.py'

data_root = 'data/demo/coco'
classes = ('circle', 'square', 'triangle')
image_scale = (160, 160)
max_epochs = 2
warmup_iters = 50

model = dict(
    data_preprocessor=dict(batch_augments=None),
    backbone=dict(init_cfg=None, drop_path_rate=0.1),
    roi_head=dict(bbox_head=dict(num_classes=len(classes)), mask_head=dict(num_classes=len(classes))),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200), rcnn=dict(sampler=dict(num=16))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='CocoMetric', ann_file=data_root + '/annotations/instances_val.json',
                     metric=['bbox', 'segm'], format_only=False)
test_evaluator = dict(val_evaluator)

train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min_ratio=0.01,
         convert_to_iter_based=True),
]
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=1e-3, fused=True), paramwise_cfg=dict(decay_rate=0.9))
auto_scale_lr = dict(enable=False)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(_delete_=True, type='CheckpointHook', by_epoch=True, interval=max_epochs, max_keep_ckpts=1,
                    backend_args=dict(backend='atomic_local')),
    visualization=dict(_delete_=True, type='DetVisualizationHook', draw=True, interval=10, score_thr=0.5))
log_processor = dict(by_epoch=True)
custom_hooks = [
    *_base_.custom_hooks,
    dict(type='DemoDataHook', kind='coco', data_root=data_root),
    dict(type='EvalProgressBarHook'),
]
randomness = dict(seed=0)
# The demo's own work dir, apart from the paper config's.
work_dir = './work_dirs/convnext_iso_s_lsj_100e_demo'
