"""The ConvNeXt UperNet recipe with 512x512 training crops, tested with 512x512 windows at stride 341.

16 images per batch: 8 GPUs x 2.
"""
_base_ = [
    './upernet_convnext_160k_ade20k.py',
    'mmseg::_base_/datasets/ade20k.py',
]

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
train_dataloader = dict(batch_size=2)
