"""UperNet with a ConvNeXt backbone on ADE20K (150 classes), the official release's 160k-iteration recipe.

mmseg's UperNet (channels 512) with its auxiliary FCN head (loss weight 0.4) on stage 2; AdamW with stage-wise
lr decay 0.9 and fp16 AMP; 1500-iteration linear warm-up, then poly decay (power 1) to 0 at 160k iterations.
Tests: single scale with a sliding window; ``tools/test.py --tta`` runs mmseg's multi-scale (0.5 to 1.75) and
flip test. The crop size comes from upernet_convnext_{512,640}_160k_ade20k.py, the backbone from each config.

Data: mmseg's layout under data/ade/ADEChallengeData2016 (images/ and annotations/, training/ and
validation/); elsewhere: --cfg-options data_root=PATH.
"""
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/default_runtime.py',
    './convnext_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
# Checkpoints written atomically (convnext_runtime.py).
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='atomic_local')))

num_classes = 150
model = dict(
    pretrained=None,  # mmseg's ResNet model names one; ConvNeXt loads its checkpoint through init_cfg
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        out_indices=(0, 1, 2, 3),
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained')),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=dict(num_classes=num_classes))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',  # fp32 on a CPU: --cfg-options optim_wrapper.type=OptimWrapper (tools/train.py does it)
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'),
    optimizer=dict(type='AdamW', betas=(0.9, 0.999), weight_decay=0.05))

warmup_iters = 1500
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters,
         end=_base_.train_cfg.max_iters),
]
