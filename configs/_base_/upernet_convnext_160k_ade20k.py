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
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)
# What a run of this recipe declares beyond the host's defaults (each scoped to the run):
# RandomStateHook: checkpoints carry the random generators, so --resume continues the same draws.
# SafeCheckpointHook: checkpoints of plain data, which --resume reads with torch's safe loader (torch >= 2.6).
# AutocastNetworkHook: with val_cfg/test_cfg.fp16=True, the layers in bf16/fp16 and the post-processing in fp32.
# BackboneWidthCheckHook: a neck or head written for another ConvNeXt width stops at the start with what to write.
# CPUTrainingMemoryHook: on a CPU, glibc keeps freed blocks for reuse while training (no effect on a GPU).
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='SafeCheckpointHook'),
    dict(type='AutocastNetworkHook'),
    dict(type='BackboneWidthCheckHook'),
    dict(type='CPUTrainingMemoryHook'),
]
# Checkpoints written to a temporary file and renamed: a run killed mid-save leaves no truncated file.
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
