"""UperNet, ConvNeXt-B pre-trained on ImageNet-22K, 640x640 crops, 160k iterations on ADE20K.

Paper: 52.6 mIoU single-scale, 53.1 mIoU multi-scale (tools/test.py --tta).
"""
_base_ = '../_base_/upernet_convnext_640_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='data/pretrained/convnext_base_22k_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(num_layers=12))
