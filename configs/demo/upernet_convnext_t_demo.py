"""Demo: UperNet ConvNeXt-T (configs/upernet/convnext_t_512_160k_ade20k.py) from scratch on the generated shapes.

About ten minutes on two CPU cores (``make demo-seg``; docs/demo.md). The paper's model, mmseg's transforms, the
layer-decay optimizer and mmseg's IoUMetric stay; what changes, for a CPU and a small synthetic dataset:

- data: the ADE20K-format demo set in data/demo/ade (convnext_mm/demo_data.py; DemoDataHook generates it when
  the run starts unless it is there), read by mmseg's BaseSegDataset (ADE20KDataset accepts only ADE20K's own
  class names) with the demo's four classes; 128x128 crops of 128-pixel images (the paper: 512);
- schedule: 160 iterations with a 20-iteration warm-up, a learning rate for training from scratch, little drop
  path; fp32 (OptimWrapper) and AdamW's fused implementation;
- tests on the whole image (the paper slides 512x512 windows); evaluation once, at the end, with a progress bar;
  a picture of the predictions on every 10th validation image under the work dir.

mmseg's own tools run it as it is: ``python .../mmseg/.mim/tools/train.py configs/demo/upernet_convnext_t_demo.py``.
"""
_base_ = '../upernet/convnext_t_512_160k_ade20k.py'

data_root = 'data/demo/ade'
classes = ('background', 'circle', 'square', 'triangle')  # convnext_mm.demo_data.SEG_CLASSES
crop_size = (128, 128)
image_scale = (128, 128)
max_iters = 160
warmup_iters = 20
vis_interval = 10  # one picture per this many validation images

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None, drop_path_rate=0.1),  # init_cfg=None: ConvNeXt's own truncated-normal init
    decode_head=dict(num_classes=len(classes)),
    auxiliary_head=dict(num_classes=len(classes)),
    test_cfg=dict(_delete_=True, mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]


def demo_dataset(folder, pipeline):
    """The ADE20K layout (0 = unlabeled, ignored with reduce_zero_label), read by mmseg's base class."""
    return dict(
        _delete_=True, type='BaseSegDataset', data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png',
        reduce_zero_label=True, metainfo=dict(classes=classes), pipeline=pipeline,
        data_prefix=dict(img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'))


train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False, dataset=demo_dataset('training', train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=demo_dataset('validation', test_pipeline))
test_dataloader = dict(num_workers=0, persistent_workers=False, dataset=demo_dataset('validation', test_pipeline))

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
optim_wrapper = dict(
    type='OptimWrapper',  # fp32: AmpOptimWrapper needs a GPU
    optimizer=dict(lr=1e-3, fused=True),
    paramwise_cfg=dict(decay_rate=0.9))

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters // 4, max_keep_ckpts=2),
    visualization=dict(_delete_=True, type='SegVisualizationHook', draw=True, interval=vis_interval))
custom_hooks = [
    *_base_.custom_hooks,
    dict(type='DemoDataHook', kind='ade', data_root=data_root),
    dict(type='EvalProgressBarHook'),
]
randomness = dict(seed=0)  # the same figures on every run (the docs quote them)
# The demo's own work dir (so the paper config's --resume never picks a demo checkpoint), under the name the
# docs use.
work_dir = './work_dirs/convnext_t_512_160k_ade20k_demo'
