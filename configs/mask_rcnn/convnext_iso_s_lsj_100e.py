"""Mask R-CNN, isotropic ConvNeXt-S (18 blocks x 384) pre-trained on ImageNet-1K, ViTDet's simple pyramid and
LSJ 100-epoch recipe on COCO (see the base file for what is ViTDet's and what is ours).

No reference result: the paper reports the isotropic models on ImageNet only (79.7 top-1 for S).
Layer decay 0.8 over ids 0 (stem) .. 19 (neck, heads): ViTDet uses 0.7 for ViT-B (12 blocks) and 0.8 for ViT-L
(24); 0.8 puts the stem near ViT-B's stem lr scale. Drop path 0.1 as ViTDet's ViT-B.
"""
_base_ = '../_base_/mask_rcnn_convnext_iso_simple_fpn_lsj_100e_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.1,
        layer_scale_init_value=0.,  # the official S has no layer scale
        init_cfg=dict(checkpoint='data/pretrained/convnext_iso_small_1k_224_ema.pth')),
    neck=dict(backbone_channel=384))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8))
