"""UperNet, ConvNeXt-S pre-trained on ImageNet-1K, 512x512 crops, 160k iterations on ADE20K.

Paper: 48.7 mIoU single-scale, 49.6 mIoU multi-scale (tools/test.py --tta).
"""
_base_ = '../_base_/upernet_convnext_512_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='data/pretrained/convnext_small_1k_224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(num_layers=12))
