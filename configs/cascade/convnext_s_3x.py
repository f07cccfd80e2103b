"""Cascade Mask R-CNN, ConvNeXt-S pre-trained on ImageNet-1K, 3x schedule on COCO.

Paper: 51.9 box AP, 45.0 mask AP.
"""
_base_ = '../_base_/cascade_mask_rcnn_convnext_3x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='data/pretrained/convnext_small_1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(decay_rate=0.7, num_layers=12))
