"""Mask R-CNN, isotropic ConvNeXt-B (18 blocks x 768) pre-trained on ImageNet-1K, ViTDet's simple pyramid and
LSJ 100-epoch recipe on COCO (see the base file for what is ViTDet's and what is ours).

No reference result: the paper reports the isotropic models on ImageNet only (82.0 top-1 for B).
Layer decay 0.8 over ids 0 (stem) .. 19 (neck, heads), as for S; drop path 0.1 as ViTDet's ViT-B.
"""
_base_ = '../_base_/mask_rcnn_convnext_iso_simple_fpn_lsj_100e_coco.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.1,
        layer_scale_init_value=0.,  # the official B has no layer scale
        init_cfg=dict(checkpoint='data/pretrained/convnext_iso_base_1k_224_ema.pth')),
    neck=dict(backbone_channel=768))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8))
