"""Demo mode's two hooks.

The demo is a set of config files under ``configs/demo/`` (``cascade_convnext_t_demo.py``,
``upernet_convnext_t_demo.py``, ``mask_rcnn_convnext_iso_s_demo.py``), run as any config (``python tools/train.py
configs/demo/cascade_convnext_t_demo.py``): each inherits a paper config and states what the demo changes (data,
classes, pipelines, schedule, initialization; docs/demo.md). They list the hooks here, so mmdet's and mmseg's own
``tools/train.py`` and ``tools/test.py`` run them as they are, on a fresh checkout:

- :class:`DemoDataHook` generates the demo's data set (:mod:`convnext_mm.demo_data`) unless it is there;
- :class:`EvalProgressBarHook` shows a progress bar while the validation or test images are evaluated.
"""
import fcntl
import os
import os.path as osp
import sys

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.utils import ProgressBar


@HOOKS.register_module()
class DemoDataHook(Hook):
    """Generates the demo's ``kind`` set ('coco' or 'ade') at ``data_root`` unless a complete copy is there.

    It does so when it is built, in the Runner's ``__init__``: the Runner builds the datasets and the COCO
    evaluator, which read the files, before it calls any hook (``before_run`` included). A folder that holds
    other files is refused, not replaced (``data_root`` may point at a real dataset by mistake), except the
    demo's own place, data/demo/KIND. The processes of a distributed run take turns (a file lock): the first
    generates the set, the others find it complete.
    """

    def __init__(self, kind, data_root):
        from .demo_data import DEMO_ROOT, MAKERS, ensure_demo_set  # OpenCV: imported by the demo's runs only
        if kind not in MAKERS:
            raise ValueError(f'DemoDataHook: kind={kind!r}; the demo sets are {sorted(MAKERS)}')
        folder = str(data_root).rstrip('/')
        ours = osp.abspath(folder) == osp.abspath(osp.join(DEMO_ROOT, kind))
        parent = osp.dirname(osp.abspath(folder))
        os.makedirs(parent, exist_ok=True)
        with open(osp.join(parent, f'.{osp.basename(folder)}.lock'), 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ensure_demo_set(kind, folder, ours=ours)


@HOOKS.register_module()
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
