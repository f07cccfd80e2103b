"""Interrupted training that resumes as if never stopped: safe loading, atomic saving, random state.

Importing convnext_mm sets up the first two for every mmengine Runner; the third is a hook configs list.

1. Safe loading. Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``: a restricted unpickler
   that builds only tensors, containers and allow-listed types. mmengine 0.10.7 calls ``torch.load``
   without ``weights_only`` in all of its checkpoint loaders (local files, URLs, ``open-mmlab://``), and its
   own checkpoints hold numpy arrays and dtypes and the message hub's ``HistoryBuffer`` objects, so resuming
   fails. We register exactly those types with ``torch.serialization.add_safe_globals``, once, at import:
   every loader keeps the safe unpickler (anything else in a file is still refused), and nothing in mmengine
   is patched. A scoped alternative (re-registering mmengine's local loader with a ``safe_globals`` context)
   would miss its URL loaders and copy its code; the types allowed are plain data, harmless to allow globally.
   By default pickle stores a ``HistoryBuffer`` with its statistics functions, as ``getattr(HistoryBuffer,
   'mean')``; allowing ``getattr`` would open the safe loader wide, so a ``copyreg`` reducer stores it as a
   call of its own constructor with its two arrays instead.
2. Atomic saving. mmengine writes a checkpoint with ``open(path, 'wb').write(...)`` through its file
   backend, so a run killed mid-save leaves a truncated file under the final name. :class:`AtomicLocalBackend`
   replaces mmengine's local backend (its registered extension point) and writes to a temporary file in the
   same folder, then renames it over the final name: a checkpoint file either is complete or does not exist.
3. Random state. :class:`RandomStateHook` stores the random generators in each checkpoint and restores
   them on resume, so RoI sampling, drop path and augmentation draw what the uninterrupted run would have.
"""
import copyreg
import os
import os.path as osp
import random

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from .checkpoint import SAFE_GLOBALS

# What an mmengine checkpoint holds beyond tensors and plain containers: numpy data (SAFE_GLOBALS) and the
# message hub's HistoryBuffer (its logged values), rebuilt by calling the class (see _reduce_history_buffer).
MMENGINE_SAFE_GLOBALS = [*SAFE_GLOBALS, HistoryBuffer]
torch.serialization.add_safe_globals(MMENGINE_SAFE_GLOBALS)


def _reduce_history_buffer(buffer):
    """Pickle a HistoryBuffer as ``HistoryBuffer(log_history, count_history, max_length)``: data only."""
    return HistoryBuffer, (buffer._log_history, buffer._count_history, buffer.max_length)


copyreg.pickle(HistoryBuffer, _reduce_history_buffer)


def write_atomically(data, path):
    """Write ``data`` (bytes) to ``path`` so that ``path`` never exists half-written.

    The bytes go to a hidden temporary file beside ``path`` (same file system, so the rename is atomic),
    are flushed to disk, then renamed over ``path``. A crash leaves at most the temporary file behind.
    """
    folder, name = osp.split(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, with atomic writes (used for checkpoints, dumped configs, results)."""

    def put(self, obj, filepath):
        write_atomically(obj, filepath)

    def put_text(self, obj, filepath, encoding='utf-8'):
        write_atomically(obj.encode(encoding), filepath)


# Paths without a prefix (local files) go through the atomic backend.
register_backend('local', AtomicLocalBackend, force=True, prefixes='')


def get_random_state():
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state, generators=('torch', 'numpy', 'python', 'cuda')):
    if 'torch' in generators:
        torch.set_rng_state(state['torch'])
    if 'cuda' in generators and 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    if 'numpy' in generators:
        np.random.set_state(state['numpy'])
    if 'python' in generators:
        random.setstate(state['python'])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Saves the random generators' state with each checkpoint and restores it when training resumes.

    Use with ``custom_hooks=[dict(type='RandomStateHook')]``. Where it is restored follows the loop:
    an epoch-based loop restores everything before its next epoch; an iteration-based loop first re-reads
    the batches already trained (which replays the data pipeline's numpy/python draws), so only torch's
    generator (the model's: RoI sampling, drop path) is restored, before the next iteration. Validation
    during training leaves the generators as it found them, so it cannot shift the training's draws.
    Bit-exact continuation needs ``num_workers=0``: data worker processes re-seed when they start.
    """

    def __init__(self):
        self._resumed_state = None
        self._state_before_val = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['random_state'] = get_random_state()

    def after_load_checkpoint(self, runner, checkpoint):
        # Also called for load_from (fine-tuning); applied only if training then starts past iteration 0.
        self._resumed_state = checkpoint.get('random_state')

    def before_train_epoch(self, runner):
        if self._resumed_state is None or isinstance(runner.train_loop, IterBasedTrainLoop):
            return
        if runner.iter > 0:
            set_random_state(self._resumed_state)
        self._resumed_state = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._resumed_state is None:
            return
        if runner.iter > 0:
            set_random_state(self._resumed_state, generators=('torch', 'cuda'))
        self._resumed_state = None

    def before_val(self, runner):
        self._state_before_val = get_random_state()

    def after_val(self, runner):
        if self._state_before_val is not None:
            set_random_state(self._state_before_val)
            self._state_before_val = None
