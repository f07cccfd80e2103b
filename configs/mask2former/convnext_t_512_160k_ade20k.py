"""Mask2Former, ConvNeXt-T pre-trained on ImageNet-1K, 512x512 crops, 160k iterations on ADE20K (semantic).

Source: mmseg's mask2former_swin-t_8xb2-160k_ade20k-512x512.py (on mask2former_r50_8xb2-160k_ade20k-512x512.py:
the pixel decoder and transformer decoder, 100 queries, the data pipeline, AdamW lr 1e-4 and weight decay 0.05
with the backbone at lr x0.1 and no weight decay on norms or the query and level embeddings, gradient clipping at
0.01, poly decay over 160k iterations, 8 GPUs x 2 images) with ConvNeXt-T in place of Swin-T (the same four widths,
96 to 768, into the pixel decoder) at Swin-T's drop path 0.3. The Swin-specific custom keys (its patch-embedding
and block norms, position tables) have no ConvNeXt counterpart beyond the norms, which norm_decay_mult=0 covers.
mmseg publishes no result for this combination, and this repository has none of its own.

Weights: the official convnext_tiny_1k_224.pth in data/pretrained/. Data: mmseg's ADE20K layout under
data/ade/ADEChallengeData2016.
"""
_base_ = 'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py'

# configs/_base_/convnext_runtime.py's import and hooks, written here: that file cannot be a base beside mmseg's
# Mask2Former config, which sets custom_imports too (to mmdet's models, which its heads need).
custom_imports = dict(imports=['mmdet.models', 'convnext_mm'], allow_failed_imports=False)
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='SafeCheckpointHook'),
    dict(type='AutocastNetworkHook'),
    dict(type='BackboneWidthCheckHook'),
    dict(type='CPUMemoryReuseHook'),
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained', checkpoint='data/pretrained/convnext_tiny_1k_224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]))

# Checkpoints written atomically (convnext_runtime.py).
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='atomic_local')))
