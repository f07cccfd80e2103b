"""Models for CPU tests. The paper's Cascade Mask R-CNN and UperNet configs shrunk (tests/test_resume.py,
tests/test_data_errors.py): an atto ConvNeXt at random init and 32-channel necks and heads, few proposals;
same model classes, losses, samplers and data flow, only widths and counts change. And ``randomize`` for the
backbone's numerics tests."""
import re

import os.path as osp

import pytest
import torch

WIDTH = 32
ATTO_DIMS = [40, 80, 160, 320]


def randomize(model, seed=0):
    """Non-trivial values for every parameter, norms and layer scale included, so numerics are really tested
    (a fresh model's 1e-6 layer scale would hide each block's branch)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + (1.0 if param.dim() == 1 else 0.0))
    return model


def shrink_cascade(cfg, num_classes):
    """In place: ``cfg`` (configs/cascade/*) with a tiny model of ``num_classes`` classes."""
    model = cfg.model
    model.backbone.update(arch='atto', drop_path_rate=0.1, init_cfg=None)
    model.neck.update(in_channels=ATTO_DIMS, out_channels=WIDTH)
    model.rpn_head.update(in_channels=WIDTH, feat_channels=WIDTH)
    roi_head = model.roi_head
    roi_head.bbox_roi_extractor.out_channels = WIDTH
    roi_head.mask_roi_extractor.out_channels = WIDTH
    for head in roi_head.bbox_head:
        head.update(num_classes=num_classes, in_channels=WIDTH, conv_out_channels=WIDTH, fc_out_channels=WIDTH)
    roi_head.mask_head.update(num_classes=num_classes, in_channels=WIDTH, conv_out_channels=WIDTH)
    model.train_cfg.rpn_proposal.max_per_img = 16
    for stage in model.train_cfg.rcnn:
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


@pytest.fixture
def one_thread():
    """Train in-process on one thread: tiny models gain nothing from two, and OpenMP threads spin badly on a
    machine busy with other work (a step can take ten times longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
