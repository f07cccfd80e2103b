"""UperNet with an isotropic ConvNeXt on ADE20K (150 classes), 512x512 crops, 160k iterations: mmseg's recipe for
ViT-B (vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py), with the ConvNeXt blocks in place of ViT's.

The paper gives no segmentation recipe for its isotropic models (it reports them on ImageNet only), so none of
the numbers here are the paper's. Taken from mmseg's ViT-B: four block outputs (ViT's (2, 5, 8, 11) of 12 blocks,
here blocks (d + 1) * depth // 4 - 1: (3, 8, 12, 17) of 18), mmseg's MultiLevelNeck resizing them by 4, 2, 1 and
0.5 (strides 4-32) at the backbone's width, UperNet (channels 512) and the auxiliary FCN head (weight 0.4) on the
last output; AdamW lr 6e-5, weight decay 0.01 (none on norms and biases), 1500-iteration linear warm-up then poly
decay to 0, fp32, 16 images per batch (8 GPUs x 2), whole-image test at mmseg's ADE20K test resize (2048x512).
Ours, not tuned: layer-wise lr decay over the blocks (rate 0.9, the official ConvNeXt UperNet configs' rate;
ids 0 stem .. 19 neck and heads), which mmseg's ViT-B recipe does not use, and each size's drop path rate.

Data: mmseg's layout under data/ade/ADEChallengeData2016 (images/ and annotations/, training/ and validation/);
elsewhere: --cfg-options data_root=PATH.
"""
_base_ = [
    'mmseg::_base_/models/upernet_vit-b16_ln_mln.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    './convnext_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
# Checkpoints written atomically (convnext_runtime.py).
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='atomic_local')))

crop_size = (512, 512)
num_classes = 150
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,  # mmseg's ViT model names one; ConvNeXtIsotropic loads its checkpoint through init_cfg
    backbone=dict(
        _delete_=True,
        type='ConvNeXtIsotropic',
        out_indices=(3, 8, 12, 17),
        init_cfg=dict(type='Pretrained')),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=dict(num_classes=num_classes))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise', num_layers=18),
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01))

warmup_iters = 1500
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters,
         end=_base_.train_cfg.max_iters),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
