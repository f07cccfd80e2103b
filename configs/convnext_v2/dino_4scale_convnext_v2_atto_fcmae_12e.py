"""DINO (4 scales), ConvNeXt V2-atto pre-trained by FCMAE on ImageNet-1K, 12 epochs on COCO.

Source: mmdet's projects/ConvNeXt-V2 (configs/dino-4scale_r50_8xb2-12e-fcmae-atto_coco.py): mmdet's
dino-4scale_r50_8xb2-12e_coco.py with a V2-atto backbone (stages 1-3, drop path 0.1, GRN instead of layer scale)
and its ChannelMapper on their widths, 8 GPUs x 1 image. mmdet publishes no result for it, and this repository has
none of its own. The same recipe with convnext_mm's ConvNeXt in place of mmpretrain's, and one change: the
optimizer is built by ConvNeXtLayerDecayOptimizerConstructor without decay (decay_rate=1), which keeps DINO's
AdamW (lr 1e-4, weight decay 1e-4, backbone lr x0.1, gradient clipping at 0.1) and gives no weight decay to 1-D
parameters and biases, GRN's gamma and beta among them, as the ConvNeXt V2 authors train (DINO's own constructor
would decay them).

Weights: mmpretrain's convnext-v2-atto_fcmae-pre_3rdparty_in1k_20230104-23765f83.pth (download.openmmlab.com/
mmclassification/v0/convnext-v2/) in data/pretrained/; the official FCMAE file (convnextv2_atto_1k_224_fcmae.pt)
loads too. Data: mmdet's COCO layout under data/coco/.
"""
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    '../_base_/convnext_runtime.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='atto',
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        layer_scale_init_value=0.,  # GRN replaces layer scale
        use_grn=True,
        init_cfg=dict(type='Pretrained',
                      checkpoint='data/pretrained/convnext-v2-atto_fcmae-pre_3rdparty_in1k_20230104-23765f83.pth')),
    neck=dict(in_channels=[80, 160, 320]))

train_dataloader = dict(batch_size=1, num_workers=2)  # 8 GPUs x 1 image

optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(_delete_=True, decay_rate=1.0, decay_type='layer_wise', num_layers=6,
                       custom_keys={'backbone': dict(lr_mult=0.1)}))

# Checkpoints written atomically (convnext_runtime.py).
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='atomic_local')))
