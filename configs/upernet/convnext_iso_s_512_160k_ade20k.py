"""UperNet, isotropic ConvNeXt-S (18 blocks x 384) pre-trained on ImageNet-1K, 512x512 crops, 160k iterations on
ADE20K, mmseg's ViT-B recipe (see the base file for what is mmseg's and what is ours).

No reference result: the paper reports the isotropic models on ImageNet only (79.7 top-1 for S). Drop path 0.1,
the rate of its ImageNet training.
"""
_base_ = '../_base_/upernet_convnext_iso_512_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.1,
        layer_scale_init_value=0.,  # the official S has no layer scale
        init_cfg=dict(checkpoint='data/pretrained/convnext_iso_small_1k_224_ema.pth')),
    neck=dict(in_channels=[384] * 4, out_channels=384),
    decode_head=dict(in_channels=[384] * 4),
    auxiliary_head=dict(in_channels=384))
