"""UperNet, ConvNeXt-L pre-trained on ImageNet-22K, 640x640 crops, 160k iterations on ADE20K.

Paper: 53.2 mIoU single-scale, 53.7 mIoU multi-scale (tools/test.py --tta).
"""
_base_ = '../_base_/upernet_convnext_640_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='data/pretrained/convnext_large_22k_224.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
optim_wrapper = dict(
    type='OptimWrapper',  # trained in fp32 in the official release
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(num_layers=12))
