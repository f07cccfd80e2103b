"""Cascade Mask R-CNN, ConvNeXt-B pre-trained on ImageNet-1K, 3x schedule on COCO.

Paper: 52.7 box AP, 45.6 mask AP.
"""
_base_ = '../_base_/cascade_mask_rcnn_convnext_3x_coco.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.7,
        init_cfg=dict(checkpoint='data/pretrained/convnext_base_1k_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(decay_rate=0.8, num_layers=12))
