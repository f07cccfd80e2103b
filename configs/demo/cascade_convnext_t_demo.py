"""Demo: Cascade Mask R-CNN ConvNeXt-T (configs/cascade/convnext_t_3x.py) from scratch on the generated shapes.

About ten minutes on two CPU cores (``make demo``; docs/demo.md). The paper's model, mmdet's transforms, the
layer-decay optimizer and mmdet's CocoMetric stay; what changes, for a CPU and a small synthetic dataset:

- data: the COCO-format demo set in data/demo/coco (convnext_mm/demo_data.py; DemoDataHook generates it when
  the run starts, a few seconds, unless it is there), its three classes, images of 128 to 160 pixels kept at
  their size (the paper trains at 800 to 1333);
- schedule: 2 epochs of 116 iterations with a 50-iteration warm-up, a learning rate for training from scratch
  and a gentler layer decay (lower stages have to learn too), little drop path; fp32 (OptimWrapper) and AdamW's
  fused implementation (the same update in one pass over all parameters: a CPU spends much of a small step
  there otherwise);
- detection: fewer proposals and fewer sampled RoIs per image;
- evaluation once, at the end, with a progress bar; a picture of the predictions on every 10th validation image
  under the work dir (<timestamp>/vis_data/vis_image).

mmdet's own tools run it as it is: ``python .../mmdet/.mim/tools/train.py configs/demo/cascade_convnext_t_demo.py``.
"""
_base_ = '../cascade/convnext_t_3x.py'

data_root = 'data/demo/coco'
classes = ('circle', 'square', 'triangle')  # convnext_mm.demo_data.CLASSES
image_scale = (160, 160)  # (long, short) side: the demo images are 128 to 160 pixels wide, kept as they are
max_epochs = 2  # of 232 images with objects, 2 per batch: 232 iterations
warmup_iters = 50
vis_interval = 10  # one picture per this many validation images

model = dict(
    backbone=dict(init_cfg=None, drop_path_rate=0.1),  # init_cfg=None: ConvNeXt's own truncated-normal init
    roi_head=dict(
        bbox_head=[dict(head, num_classes=len(classes)) for head in _base_.model.roi_head.bbox_head],
        mask_head=dict(num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),  # boxes kept per image before NMS, after
        # RoIs sampled per image for each cascade stage (mmdet's default: 512)
        rcnn=[dict(stage, sampler=dict(stage.sampler, num=16)) for stage in _base_.model.train_cfg.rcnn]),
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
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=dict(classes=classes),
        pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        metainfo=dict(classes=classes),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True,
    type='CocoMetric',
    ann_file=data_root + '/annotations/instances_val.json',
    metric=['bbox', 'segm'],
    format_only=False)
test_evaluator = dict(val_evaluator)  # a copy: merging consumes _delete_

train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min_ratio=0.01,
         convert_to_iter_based=True),
]
optim_wrapper = dict(
    type='OptimWrapper',  # fp32: AmpOptimWrapper needs a GPU
    optimizer=dict(lr=1e-3, fused=True),
    paramwise_cfg=dict(decay_rate=0.9))
auto_scale_lr = dict(enable=False)

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(max_keep_ckpts=2),
    visualization=dict(_delete_=True, type='DetVisualizationHook', draw=True, interval=vis_interval, score_thr=0.5))
custom_hooks = [
    *_base_.custom_hooks,
    dict(type='DemoDataHook', kind='coco', data_root=data_root),
    dict(type='EvalProgressBarHook'),
]
randomness = dict(seed=0)  # the same figures on every run (the docs quote them)
# The demo's own work dir (so the paper config's --resume never picks a demo checkpoint), under the name the
# docs and tools/infer.py examples use.
work_dir = './work_dirs/convnext_t_3x_demo'
