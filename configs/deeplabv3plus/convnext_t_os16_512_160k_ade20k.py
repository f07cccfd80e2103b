"""DeepLabV3+, ConvNeXt-T pre-trained on ImageNet-1K at output stride 16, 512x512 crops, 160k iterations on ADE20K.

Sources, adapted: mmseg's deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py (the DepthwiseSeparableASPPHead with its
48-channel decoder shortcut from the stride-4 map, the FCN auxiliary head on stage 2 with loss weight 0.4, the data
pipeline, 16 images per batch as 4 GPUs x 4, 160k iterations, whole-image test) with these changes:
- the backbone: ConvNeXt-T with output_stride=16 (its last stage dilated, timm's rule) in place of ResNet-50 at
  output stride 8; so the ASPP rates are (1, 6, 12, 18), those of mmseg's output-stride-16 variant
  (deeplabv3plus_r101-d16-mg124), and the heads read ConvNeXt-T's widths (768 into ASPP, 96 into the shortcut,
  384 into the auxiliary head), the only stages it outputs;
- the optimizer and schedule: the ConvNeXt-T UperNet recipe of the official ConvNeXt release
  (configs/upernet/convnext_t_512_160k_ade20k.py: AdamW lr 1e-4, weight decay 0.05, stage-wise lr decay 0.9 over
  6 layers, drop path 0.4, fp16 AMP, 1500-iteration warm-up then poly decay), in place of mmseg's SGD lr 0.01,
  which was tuned for ResNets.
Neither source published a result for this combination, and this repository has none of its own.

Weights: the official convnext_tiny_1k_224.pth in data/pretrained/. Data: mmseg's ADE20K layout under
data/ade/ADEChallengeData2016. On a CPU: --cfg-options optim_wrapper.type=OptimWrapper.
"""
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/convnext_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
# Checkpoints written atomically (convnext_runtime.py).
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='atomic_local')))

crop_size = (512, 512)
num_classes = 150
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,  # mmseg's ResNet model names one; ConvNeXt loads its checkpoint through init_cfg
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        out_indices=(0, 2, 3),  # strides 4, 16, 16: what the heads read (an unread output gets no gradient)
        output_stride=16,
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained', checkpoint='data/pretrained/convnext_tiny_1k_224.pth')),
    decode_head=dict(in_channels=768, in_index=2, c1_in_channels=96, dilations=(1, 6, 12, 18),
                     num_classes=num_classes),
    auxiliary_head=dict(in_channels=384, in_index=1, num_classes=num_classes))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',  # fp32 on a CPU: --cfg-options optim_wrapper.type=OptimWrapper (tools/train.py does it)
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))

warmup_iters = 1500
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters,
         end=_base_.train_cfg.max_iters),
]
