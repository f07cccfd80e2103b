"""Models for CPU tests: backbone sizes, the paper's Cascade Mask R-CNN and UperNet configs shrunk (an atto
ConvNeXt at random init, 32-channel necks and heads, few proposals: the same model classes, losses, samplers and
data flow, only widths and counts change), one-image batches to train them on, ``randomize`` for numerics tests
and the gradient checks of a training step."""
import re

import os.path as osp

import numpy as np
import torch

# The smallest backbone with every part (4 stages, a stage of two blocks): 5 blocks, 8 to 64 channels.
SMALLEST_ARCH = dict(depths=[1, 1, 2, 1], dims=[8, 16, 32, 64])
# The smallest whose stage 2 layer_wise decay splits (4 blocks: layer ids 3, 3, 3, 4), so num_layers >= 5.
SMALLEST_LAYER_WISE_ARCH = dict(depths=[1, 2, 4, 1], dims=[8, 16, 32, 64])
ATTO_ARCH = dict(depths=[2, 2, 6, 2], dims=[40, 80, 160, 320])  # arch='atto'
ATTO_DIMS = ATTO_ARCH['dims']
WIDTH = 32  # of the shrunk necks and heads

# The paper's cascade T config shrunk for a tools test (a config file: ``.format(base=CASCADE_T)``): an atto
# backbone without pre-trained weights, 64x64 images kept at their size, few proposals, no validation during
# training.
TINY_CASCADE_CONFIG = '''
_base_ = {base!r}
model = dict(
    backbone=dict(arch='atto', drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[40, 80, 160, 320]),
    train_cfg=dict(rpn_proposal=dict(max_per_img=8)),
    test_cfg=dict(rpn=dict(max_per_img=8), rcnn=dict(score_thr=0.0)))  # untrained: keep every box to evaluate
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_begin=2)  # no validation: the test evaluates with tools/test.py
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(save_optimizer=False))
randomness = dict(seed=0)
'''

# The paper's UperNet T config shrunk alike: atto backbone, narrow heads, 64x64 crops and windows.
TINY_UPERNET_CONFIG = '''
_base_ = {base!r}
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='atto', init_cfg=None),
    decode_head=dict(in_channels=[40, 80, 160, 320], channels=32),
    auxiliary_head=dict(in_channels=160, channels=16),
    test_cfg=dict(crop_size=crop_size, stride=(43, 43)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs'),
]
test_pipeline = [  # at the images' size: the config's resize to 2048x512 would slide 121 windows over each
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_begin=3)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
'''


def randomize(model, seed=0):
    """Non-trivial values for every parameter, norms and layer scale included, so numerics are really tested
    (a fresh model's 1e-6 layer scale would hide each block's branch)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + (1.0 if param.dim() == 1 else 0.0))
    return model


def randomize_whole_model(model, seed=0):
    """Every floating tensor of a detector's or segmentor's state dict non-trivial, as after training (batch
    norms' running variances positive), so that a tensor left at its init is seen; smaller than ``randomize``'s
    and biases near 0: with ``randomize``'s the tiny detector's scores saturate, and a random backbone gives the
    same ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * 0.1
                tensor.copy_(noise.abs() + 0.5 if name.endswith('running_var') else
                             noise + (1.0 if tensor.dim() == 1 and name.endswith('weight') else 0.0))
    return model


def shrink_cascade(cfg, num_classes):
    """In place: ``cfg`` (configs/cascade/* or configs/mask_rcnn/convnext_t_3x.py) with a tiny model of
    ``num_classes`` classes."""
    model = cfg.model
    model.backbone.update(arch='atto', drop_path_rate=0.1, init_cfg=None)
    model.neck.update(in_channels=ATTO_DIMS, out_channels=WIDTH)
    model.rpn_head.update(in_channels=WIDTH, feat_channels=WIDTH)
    roi_head = model.roi_head
    roi_head.bbox_roi_extractor.out_channels = WIDTH
    roi_head.mask_roi_extractor.out_channels = WIDTH
    cascade = isinstance(roi_head.bbox_head, list)
    for head in roi_head.bbox_head if cascade else [roi_head.bbox_head]:
        head.update(num_classes=num_classes, in_channels=WIDTH, conv_out_channels=WIDTH, fc_out_channels=WIDTH)
    roi_head.mask_head.update(num_classes=num_classes, in_channels=WIDTH, conv_out_channels=WIDTH)
    model.train_cfg.rpn_proposal.max_per_img = 16
    for stage in model.train_cfg.rcnn if cascade else [model.train_cfg.rcnn]:
        stage.sampler.num = 16
    model.test_cfg.rpn.max_per_img = 16
    model.test_cfg.rcnn.max_per_img = 5
    return cfg


def read_coco_data(cfg, data_root, classes, image_size, **loader_args):
    """In place: ``cfg``'s (configs/cascade/*) dataloaders and evaluators read the COCO-format data at ``data_root``
    (demo_data.make_coco), images resized to fit ``image_size``, in this process (no workers)."""
    resize = dict(type='Resize', scale=image_size, keep_ratio=True)
    load = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True)]
    pipelines = dict(train=[*load, resize, dict(type='RandomFlip', prob=0.5), dict(type='PackDetInputs')],
                     val=[load[0], resize, load[1], dict(type='PackDetInputs')])
    for split in ('train', 'val'):
        loader = cfg[f'{split}_dataloader']
        loader.update(num_workers=0, persistent_workers=False, **loader_args)
        loader.dataset.update(data_root=data_root, ann_file=f'annotations/instances_{split}.json',
                              data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=classes),
                              pipeline=pipelines[split])
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator.ann_file = osp.join(data_root, 'annotations', 'instances_val.json')
    cfg.test_evaluator = cfg.val_evaluator
    return cfg


def shrink_upernet(cfg, num_classes, crop_size=(64, 64)):
    """In place: ``cfg`` (configs/upernet/*) with a tiny model of ``num_classes`` classes."""
    model = cfg.model
    model.data_preprocessor.size = crop_size
    model.backbone.update(arch='atto', drop_path_rate=0.1, init_cfg=None)
    model.decode_head.update(in_channels=ATTO_DIMS, channels=WIDTH, num_classes=num_classes)
    model.auxiliary_head.update(in_channels=ATTO_DIMS[2], channels=WIDTH // 2, num_classes=num_classes)
    model.test_cfg = dict(mode='whole')
    return cfg


def record_gradients_on_every_path(backbone):
    """Hooks on the backbone's parameters that every image's gradient passes through (the stem, the downsample
    layers and the output norms; a block's can be all zero where drop path dropped it for the whole batch).
    Returns the dict {name: gradient norm} that the next backward fills in. A changed weight proves nothing:
    AdamW's decoupled weight decay changes every weight that has a gradient tensor, even an all-zero one."""
    norms = {}
    for name, param in backbone.named_parameters():
        if re.match(r'(downsample_layers|norm\d)\.', name):
            norms[name] = None
            param.register_hook(lambda grad, name=name: norms.__setitem__(name, grad.norm().item()))
    return norms


def assert_every_path_got_a_gradient(norms):
    without = [name for name, norm in norms.items() if not norm]
    assert norms and not without, f'no gradient (or an all-zero one) reached {without}'



def tiny_detection_batch(num_images=1, seed=0):
    """A batch of 64x64 random images (drawn from ``seed``: the same on every call, whatever ran before) with two
    boxes and masks (the second image: one), as a detector's data preprocessor takes it."""
    generator = torch.Generator().manual_seed(seed)
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    samples = []
    for boxes in ([[10, 8, 50, 40], [20, 30, 44, 60]], [[4, 4, 30, 28]])[:num_images]:
        masks = np.zeros((len(boxes), 64, 64), np.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes):
            mask[y1:y2, x1:x2] = 1
        sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=HorizontalBoxes(torch.tensor(boxes, dtype=torch.float32)),
            labels=torch.tensor([3, 17][:len(boxes)]),
            masks=BitmapMasks(masks, 64, 64))
        samples.append(sample)
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator) for _ in samples]
    return dict(inputs=images, data_samples=samples)


def tiny_segmentation_batch(seed=0):
    """Two 64x64 random images with random label maps of ADE20K's 150 classes, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):  # two images: BN over the 1x1 pooled map of UperNet's PPM needs more than one value
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, 64, 64), generator=generator))
        samples.append(sample)
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator) for _ in samples]
    return dict(inputs=images, data_samples=samples)


def build_model(cfg):
    """The config's model outside a Runner, in its scope ('mmdet' or 'mmseg'): eval mode, SyncBN as BN."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.default_scope)
    return revert_sync_batchnorm(MODELS.build(cfg.model)).eval()


# ---- the recipes beyond the paper's (configs/deeplabv3plus, dino, mask2former, retinanet, convnext_v2), shrunk for
# one training step: an atto backbone at random init with the config's other backbone arguments (V2's GRN, the
# output stride, the stages it outputs), its readers at atto's widths, WIDTH-channel necks and heads, fewer layers
# and queries. The same model classes, losses, assigners and optimizer settings.
def atto_backbone(cfg):
    """In place: ``cfg``'s ConvNeXt as an atto at random init; returns atto's widths at its out_indices."""
    backbone = cfg.model.backbone
    backbone.update(arch='atto', init_cfg=None)
    return [ATTO_DIMS[i] for i in backbone.out_indices]


def shrink_transformer_layers(layer_cfg, num_heads=4):
    """In place: every attention and FFN config under ``layer_cfg`` at WIDTH channels, ``num_heads`` heads."""
    for key, part in layer_cfg.items():
        if key.endswith('attn_cfg'):
            part.update(embed_dims=WIDTH, num_heads=num_heads)
        elif key == 'ffn_cfg':
            part.update(embed_dims=WIDTH, feedforward_channels=2 * WIDTH)


def shrink_dino(cfg):
    model = cfg.model
    model.neck.in_channels = atto_backbone(cfg)
    model.encoder.num_layers = model.decoder.num_layers = 1  # DINO's query positions are 256 wide by design
    model.num_queries = 30  # a 64x64 image has 85 tokens, fewer than DINO's 900 queries
    model.dn_cfg.group_cfg.num_dn_queries = 10


def shrink_retinanet(cfg):
    model = cfg.model
    model.neck.update(in_channels=atto_backbone(cfg), out_channels=WIDTH)
    model.bbox_head.update(in_channels=WIDTH, feat_channels=WIDTH)


def shrink_mask2former(cfg):
    head = cfg.model.decode_head
    head.update(in_channels=atto_backbone(cfg), feat_channels=WIDTH, out_channels=WIDTH, num_queries=10)
    head.pixel_decoder.encoder.num_layers = 1
    shrink_transformer_layers(head.pixel_decoder.encoder.layer_cfg)
    head.pixel_decoder.positional_encoding.num_feats = WIDTH // 2
    head.positional_encoding.num_feats = WIDTH // 2
    head.transformer_decoder.num_layers = 3  # one round over the 3 feature levels
    shrink_transformer_layers(head.transformer_decoder.layer_cfg)
    head.train_cfg.num_points = 1024  # of 12544 by default: a 64x64 image has 4096 pixels


def shrink_deeplabv3plus(cfg):
    model = cfg.model
    widths = atto_backbone(cfg)
    model.decode_head.update(in_channels=widths[model.decode_head.in_index], c1_in_channels=widths[0],
                             channels=WIDTH, c1_channels=WIDTH // 4)
    model.auxiliary_head.update(in_channels=widths[model.auxiliary_head.in_index], channels=WIDTH // 2)


def shrink_upernet_recipe(cfg):
    widths = atto_backbone(cfg)
    cfg.model.decode_head.update(in_channels=widths, channels=WIDTH)
    cfg.model.auxiliary_head.update(in_channels=widths[cfg.model.auxiliary_head.in_index], channels=WIDTH // 2)


RECIPE_SHRINKS = {'DINO': shrink_dino, 'RetinaNet': shrink_retinanet, 'Mask2FormerHead': shrink_mask2former,
                  'DepthwiseSeparableASPPHead': shrink_deeplabv3plus, 'UPerHead': shrink_upernet_recipe}


def shrink_recipe(cfg):
    """In place: ``cfg`` (a recipe config of those above) with its tiny model, told by the detector's type or the
    segmentor's decode head; test-time windows and crops at the 64x64 test images."""
    kind = cfg.model.type if cfg.default_scope == 'mmdet' else cfg.model.decode_head.type
    RECIPE_SHRINKS[kind](cfg)
    if cfg.default_scope == 'mmseg':
        cfg.model.data_preprocessor.size = (64, 64)
        cfg.model.test_cfg = dict(mode='whole')
    return cfg
