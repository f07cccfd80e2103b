"""Cascade Mask R-CNN, ConvNeXt-XL pre-trained on ImageNet-22K, 3x schedule on COCO.

Paper: 55.2 box AP, 47.7 mask AP.
"""
_base_ = '../_base_/cascade_mask_rcnn_convnext_3x_coco.py'

model = dict(
    backbone=dict(
        arch='xlarge',
        drop_path_rate=0.8,
        init_cfg=dict(checkpoint='data/pretrained/convnext_xlarge_22k_224.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
optim_wrapper = dict(
    type='OptimWrapper',  # trained in fp32 in the official release
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.7, num_layers=12))
