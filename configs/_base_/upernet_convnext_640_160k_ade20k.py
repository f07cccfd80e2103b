"""The ConvNeXt UperNet recipe with 640x640 training crops, tested with 640x640 windows at stride 426.

16 images per batch: 8 GPUs x 2.
"""
_base_ = [
    './upernet_convnext_160k_ade20k.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
]

crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
train_dataloader = dict(batch_size=2)
