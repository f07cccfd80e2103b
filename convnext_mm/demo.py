"""Demo mode: a paper config, trained on the generated demo data, in about ten minutes on two CPU cores.

``tools/train.py CONFIG --demo`` (and ``tools/test.py CONFIG CHECKPOINT --demo``) apply :func:`demo_config`
after reading the config. What stays is the config's model (the same architecture, initialized at random:
no pre-trained weights are read), mmdet's or mmseg's data pipeline transforms, the layer-decay optimizer,
mmengine's Runner, and the metric: mmdet's ``CocoMetric`` (pycocotools) or mmseg's ``IoUMetric``.
What changes, for a CPU and a small synthetic dataset (:mod:`convnext_mm.demo_data`, made on first use):

- data: ``data/demo/coco`` or ``data/demo/ade`` with their classes; images of 128 to 160 pixels (the paper
  trains at 800 to 1333 for detection, 512 for segmentation);
- schedule: a few hundred iterations with a short warm-up, a learning rate for training from scratch and a
  gentler layer decay (lower stages have to learn too), little drop path; AdamW's fused implementation
  (the same update, in one pass over all parameters: a CPU spends much of a small step there otherwise);
- detection: lighter RoI sampling (fewer proposals and fewer sampled RoIs per image);
- evaluation once, at the end; pictures of the predictions on every ``VIS_INTERVAL``-th validation image
  are written under the work dir (``<timestamp>/vis_data/vis_image``), and a progress bar runs meanwhile.
"""
import copy
import os.path as osp
import sys

from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from .demo_data import CLASSES, DEMO_ROOT, SEG_CLASSES, ensure_demo_set
from .registry import register_in_hosts

VIS_INTERVAL = 10  # one picture per this many validation images

DET = dict(
    scale=(160, 160),  # (long, short) side: the demo images are 128 to 160 pixels wide, kept as they are
    batch_size=2,
    max_epochs=2,  # of 232 images with objects, 2 per batch: 232 iterations
    warmup_iters=50,
    lr=1e-3,
    decay_rate=0.9,
    drop_path_rate=0.1,
    rpn_proposals=(500, 200),  # (boxes kept before NMS, after) per image in training
    rcnn_rois=16,  # RoIs sampled per image for each cascade stage (mmdet's default: 512)
    test_proposals=(200, 50),
    test_detections=20,
)
SEG = dict(
    crop_size=(128, 128),
    scale=(128, 128),
    batch_size=4,
    max_iters=160,
    warmup_iters=20,
    lr=1e-3,
    decay_rate=0.9,
    drop_path_rate=0.1,
)


def demo_config(cfg, data_root=None):
    """``cfg`` (an mmdet or mmseg config read from a file) changed in place for the demo; returns it.

    ``data_root``: the folder of the demo's data set (``--demo --cfg-options data_root=PATH``), generated there
    when it has no complete copy; by default ``data/demo/coco`` or ``data/demo/ade``.
    """
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f'--demo runs mmdet and mmseg configs; this one has default_scope={scope!r}')
    kind = 'coco' if scope == 'mmdet' else 'ade'
    if data_root:
        root = ensure_demo_set(kind, str(data_root))
    else:
        root = ensure_demo_set(kind, osp.join(DEMO_ROOT, kind), ours=True)
    cfg.data_root = root
    if scope == 'mmdet':
        _detection(cfg, root)
    else:
        _segmentation(cfg, root)
    cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='EvalProgressBarHook')]
    return cfg


def _from_scratch(cfg, settings):
    """Random initialization and a schedule for it, keeping the config's optimizer constructor."""
    cfg.model.backbone.init_cfg = None  # ConvNeXt's own truncated-normal initialization
    cfg.model.backbone.drop_path_rate = settings['drop_path_rate']
    cfg.optim_wrapper.optimizer.update(lr=settings['lr'], fused=True)
    cfg.optim_wrapper.paramwise_cfg.decay_rate = settings['decay_rate']
    cfg.default_hooks.logger.interval = 10
    cfg.default_hooks.checkpoint.max_keep_ckpts = 2
    cfg.randomness = dict(seed=0)  # the same figures on every run (the docs quote them)
    if cfg.get('work_dir') is None and cfg.filename:  # not the real run's work dir (its --resume would pick these)
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(cfg.filename))[0] + '_demo')
    if cfg.get('auto_scale_lr'):
        cfg.auto_scale_lr.enable = False


def _set_heads(model_cfg, num_classes):
    for key in ('bbox_head', 'mask_head', 'decode_head', 'auxiliary_head'):
        heads = model_cfg.get(key)
        for head in heads if isinstance(heads, list) else [heads]:
            if isinstance(head, dict) and 'num_classes' in head:
                head.num_classes = num_classes


def _each(stage_cfgs):
    return stage_cfgs if isinstance(stage_cfgs, list) else [stage_cfgs]


def _detection(cfg, data_root):
    s = DET
    _from_scratch(cfg, s)
    model = cfg.model
    _set_heads(model.roi_head, len(CLASSES))
    model.train_cfg.rpn_proposal.update(nms_pre=s['rpn_proposals'][0], max_per_img=s['rpn_proposals'][1])
    for stage in _each(model.train_cfg.rcnn):
        stage.sampler.num = s['rcnn_rois']
    model.test_cfg.rpn.update(nms_pre=s['test_proposals'][0], max_per_img=s['test_proposals'][1])
    model.test_cfg.rcnn.max_per_img = s['test_detections']

    load = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True)]
    resize = dict(type='Resize', scale=s['scale'], keep_ratio=True)
    train_pipeline = [*load, resize, dict(type='RandomFlip', prob=0.5), dict(type='PackDetInputs')]
    test_pipeline = [load[0], resize, load[1], dict(
        type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
    for split, pipeline in (('train', train_pipeline), ('val', test_pipeline)):
        loader = cfg[f'{split}_dataloader']
        loader.update(num_workers=0, persistent_workers=False)
        dataset = loader.dataset
        while 'dataset' in dataset:  # RepeatDataset and similar wrappers
            dataset = dataset.dataset
        dataset.update(data_root=data_root, ann_file=f'annotations/instances_{split}.json',
                       data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=CLASSES), pipeline=pipeline)
    cfg.train_dataloader.batch_size = s['batch_size']
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.val_evaluator = dict(type='CocoMetric', ann_file=osp.join(data_root, 'annotations', 'instances_val.json'),
                             metric=['bbox', 'segm'], format_only=False)
    cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)

    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=s['max_epochs'], val_interval=s['max_epochs'])
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=s['warmup_iters']),
        dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=s['max_epochs'], T_max=s['max_epochs'],
             eta_min_ratio=0.01, convert_to_iter_based=True),
    ]
    cfg.default_hooks.visualization = dict(type='DetVisualizationHook', draw=True, interval=VIS_INTERVAL,
                                           score_thr=0.5)


def _segmentation(cfg, data_root):
    s = SEG
    _from_scratch(cfg, s)
    model = cfg.model
    _set_heads(model, len(SEG_CLASSES))
    model.data_preprocessor.size = s['crop_size']
    model.test_cfg = dict(mode='whole')

    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomResize', scale=s['scale'], ratio_range=(0.75, 1.5), keep_ratio=True),
        dict(type='RandomCrop', crop_size=s['crop_size'], cat_max_ratio=0.75),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'),
        dict(type='PackSegInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=s['scale'], keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs'),
    ]
    for split, folder, pipeline in (('train', 'training', train_pipeline), ('val', 'validation', test_pipeline)):
        loader = cfg[f'{split}_dataloader']
        loader.update(num_workers=0, persistent_workers=False)
        # The ADE20K layout, read by mmseg's base class: ADE20KDataset accepts only ADE20K's own class names.
        loader.dataset = dict(
            type='BaseSegDataset', data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png',
            reduce_zero_label=True, metainfo=dict(classes=SEG_CLASSES), pipeline=pipeline,
            data_prefix=dict(img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'))
    cfg.train_dataloader.batch_size = s['batch_size']
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)

    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=s['max_iters'], val_interval=s['max_iters'])
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=s['warmup_iters']),
        dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=s['warmup_iters'], end=s['max_iters']),
    ]
    cfg.default_hooks.checkpoint.interval = s['max_iters'] // 4
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook', draw=True, interval=VIS_INTERVAL)


@register_in_hosts('HOOKS')
class EvalProgressBarHook(Hook):
    """A progress bar over the validation or test images while they are evaluated."""

    def __init__(self):
        self._bar = None

    def _start(self, loader):
        self._bar = ProgressBar(len(loader.dataset), file=sys.stdout)

    def _advance(self, data_batch):
        if self._bar is not None:
            self._bar.update(len(data_batch['inputs']))

    def before_val_epoch(self, runner):
        self._start(runner.val_dataloader)

    def before_test_epoch(self, runner):
        self._start(runner.test_dataloader)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._advance(data_batch)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._advance(data_batch)

    def after_val_epoch(self, runner, metrics=None):
        self._finish()

    def after_test_epoch(self, runner, metrics=None):
        self._finish()

    def _finish(self):
        if self._bar is not None:
            sys.stdout.write('\n')
            self._bar = None
