"""UperNet, ConvNeXt-XL pre-trained on ImageNet-22K, 640x640 crops, 160k iterations on ADE20K.

Paper: 53.6 mIoU single-scale, 54.0 mIoU multi-scale (tools/test.py --tta).
"""
_base_ = '../_base_/upernet_convnext_640_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='xlarge',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='data/pretrained/convnext_xlarge_22k_224.pth')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
optim_wrapper = dict(
    type='OptimWrapper',  # trained in fp32 in the official release
    optimizer=dict(lr=8e-5),
    paramwise_cfg=dict(num_layers=12))
