"""Mask R-CNN, ConvNeXt-T pre-trained on ImageNet-1K, 3x schedule on COCO.

Paper: 46.2 box AP, 41.7 mask AP. mmdet's Mask R-CNN: FPN, shared-2fc box head, 4-conv mask head.
"""
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '../_base_/convnext_coco_instance_3x.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained', checkpoint='data/pretrained/convnext_tiny_1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.95, num_layers=6))
