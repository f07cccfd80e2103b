"""For tests/test_resume.py and tests/test_multinode.py: a hook that kills its own training process with SIGKILL
at a chosen point.

Configs import it with ``custom_imports=dict(imports=['convnext_mm', 'sigkill_hook'])`` (tests/ on PYTHONPATH).
"""
import os
import signal

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class SigkillHook(Hook):
    """``after_iter=N``: die once iteration N is done; ``during_save_at_iter=N``: die while the checkpoint
    of iteration N is being written (its bytes are in a file, the rename that publishes it has not happened).
    ``rank=R``: in a distributed run only the process of rank R dies after iteration N; the others go on."""

    def __init__(self, after_iter=None, during_save_at_iter=None, rank=None):
        self.after_iter = after_iter
        self.during_save_at_iter = during_save_at_iter
        self.rank = rank

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.after_iter and self.rank in (None, get_rank()):
            _die()

    def before_save_checkpoint(self, runner, checkpoint):
        if checkpoint['meta']['iter'] == self.during_save_at_iter:
            os.replace = _die
