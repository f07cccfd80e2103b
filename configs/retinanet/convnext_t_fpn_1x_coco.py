"""RetinaNet, ConvNeXt-T pre-trained on ImageNet-1K, FPN, 12 epochs (1x) on COCO.

Source: mmdet's swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py (mmdet's RetinaNet R-50 1x with a Swin-T: stages 1-3
into the FPN from its first input, 5 levels, SGD lr 0.01, 8 GPUs x 2 images, lr / 10 at epochs 8 and 11) with
ConvNeXt-T in place of Swin-T (the same widths, 192, 384, 768) at Swin-T's drop path 0.2. mmdet publishes no
result for this combination, and this repository has none of its own.

Weights: the official convnext_tiny_1k_224.pth in data/pretrained/. Data: mmdet's COCO layout under data/coco/.
"""
_base_ = [
    'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py',
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
