"""UperNet, ConvNeXt V2-B (FCMAE pre-trained, ImageNet-1K fine-tuned), 512x512 crops, 160k iterations on ADE20K.

Sources: the ConvNeXt V2 repository (facebookresearch/ConvNeXt-V2) has no segmentation code or configs, and the
V2 paper's appendix settings were not at hand when this was written, so no setting here is attributed to the V2
paper. The recipe is the official ConvNeXt release's UperNet for ConvNeXt-B at 512 (configs/upernet/
convnext_b_512_160k_ade20k.py: AdamW lr 1e-4, weight decay 0.05, stage-wise lr decay 0.9 over 12 layers, drop
path 0.4, fp16 AMP, 16 images per batch, 160k iterations) with the V2-B backbone: GRN instead of layer scale
(layer_scale_init_value=0) and no weight decay on GRN's gamma and beta (the layer-decay constructor leaves every
1-D parameter undecayed), as the ConvNeXt V2 authors train. This repository has no result of its own for it.

Weights: the official convnextv2_base_1k_224_ema.pt (dl.fbaipublicfiles.com/convnext/convnextv2/im1k/) in
data/pretrained/. Data: mmseg's ADE20K layout under data/ade/ADEChallengeData2016.
"""
_base_ = '../_base_/upernet_convnext_512_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,
        layer_scale_init_value=0.,  # GRN replaces layer scale
        use_grn=True,
        init_cfg=dict(checkpoint='data/pretrained/convnextv2_base_1k_224_ema.pt')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(num_layers=12))
