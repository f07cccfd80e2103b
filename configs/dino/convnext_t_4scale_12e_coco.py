"""DINO (4 scales), ConvNeXt-T pre-trained on ImageNet-1K, 12 epochs on COCO.

Source: mmdet's dino-4scale_r50_8xb2-12e_coco.py (the model, the multi-scale crop pipeline, AdamW lr 1e-4 and
weight decay 1e-4 with the backbone at lr x0.1, gradient clipping at 0.1, lr / 10 at epoch 11, 8 GPUs x 2 images)
with ConvNeXt-T in place of ResNet-50: stages 1-3 (strides 8, 16, 32) into the ChannelMapper at their widths, as
the R-50 gives its last three, and drop path 0.2, the rate of mmdet's one DINO config with a drop-path backbone
(dino-5scale_swin-l_8xb2-12e_coco.py). mmdet publishes no result for this combination, and this repository has
none of its own.

Weights: the official convnext_tiny_1k_224.pth in data/pretrained/. Data: mmdet's COCO layout under data/coco/.
"""
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    '../_base_/convnext_runtime.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained', checkpoint='data/pretrained/convnext_tiny_1k_224.pth')),
    neck=dict(in_channels=[192, 384, 768]))

# Checkpoints written atomically (convnext_runtime.py).
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='atomic_local')))
