"""Interrupted training that resumes as if never stopped, declared in a config and scoped to its run.

Three pieces, each named in the paper configs; a config that names none of them saves and resumes as mmengine does.

1. :class:`SafeCheckpointHook` (``custom_hooks``): checkpoints of plain data. Since torch 2.6 ``torch.load`` defaults
   to ``weights_only=True``, a restricted unpickler that builds tensors, containers and a few allow-listed types.
   mmengine 0.10.7 loads its own checkpoints that way (``--resume``, ``load_from``) and fails on what it wrote: the
   message hub's logged values are ``HistoryBuffer`` objects holding numpy arrays. The hook stores them as tensors
   when a checkpoint is saved and rebuilds them when one is loaded, so mmdet's and mmseg's own ``tools/train.py
   --resume`` read the file with torch's safe loader as it is.
2. ``atomic_local`` (a file backend, selected by ``default_hooks.checkpoint.backend_args``): mmengine writes a
   checkpoint with ``open(path, 'wb').write(...)``, so a run killed mid-save leaves a truncated file under the
   final name. This backend writes to a temporary file beside it and renames it over the final name: a checkpoint
   file either is complete or does not exist. Registered under its own name; mmengine's ``local`` backend stays.
3. :class:`RandomStateHook` (``custom_hooks``): the random generators' state in each checkpoint (as tensors and
   numbers), restored on resume, so RoI sampling, drop path and augmentation draw what the uninterrupted run would
   have.
"""
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

ATOMIC_BACKEND = 'atomic_local'


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
    """mmengine's local file backend, with atomic writes (``backend_args=dict(backend='atomic_local')``)."""

    def put(self, obj, filepath):
        write_atomically(obj, filepath)

    def put_text(self, obj, filepath, encoding='utf-8'):
        write_atomically(obj.encode(encoding), filepath)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend)


@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Checkpoints that ``torch.load(weights_only=True)`` reads: the message hub's ``HistoryBuffer`` values stored
    as ``dict(log_history=tensor, count_history=tensor, max_length=int)`` and rebuilt on load, its numpy numbers
    (the logger's ``eta``) as Python numbers (see the module doc).
    """

    def before_run(self, runner):
        atomic = any((getattr(hook, 'backend_args', None) or {}).get('backend') == ATOMIC_BACKEND
                     for hook in runner.hooks)
        runner.logger.info('SafeCheckpointHook: checkpoints hold plain data (the message hub\'s logged values as '
                           'tensors), which torch.load reads with weights_only=True; written '
                           + ('atomically (a temporary file renamed, backend_args=dict(backend=\'atomic_local\'))'
                              if atomic else 'by mmengine\'s own backend'))

    def before_save_checkpoint(self, runner, checkpoint):
        hub = checkpoint.get('message_hub')
        if isinstance(hub, dict) and isinstance(hub.get('log_scalars'), dict):
            hub['log_scalars'] = {key: history_to_data(value) for key, value in hub['log_scalars'].items()}
        if isinstance(hub, dict) and isinstance(hub.get('runtime_info'), dict):
            hub['runtime_info'] = python_numbers(hub['runtime_info'])

    def after_load_checkpoint(self, runner, checkpoint):
        hub = checkpoint.get('message_hub')
        if isinstance(hub, dict) and isinstance(hub.get('log_scalars'), dict):
            hub['log_scalars'] = {key: history_from_data(value) for key, value in hub['log_scalars'].items()}


def python_numbers(value):
    """``value`` with every numpy number in it, in dicts, lists and tuples too, as a Python number."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((key, python_numbers(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(python_numbers(item) for item in value)
    return value


def history_to_data(buffer):
    if not isinstance(buffer, HistoryBuffer):
        return buffer
    log, count = buffer.data
    return dict(log_history=torch.from_numpy(np.array(log)), count_history=torch.from_numpy(np.array(count)),
                max_length=buffer.max_length)


def history_from_data(value):
    if isinstance(value, dict) and set(value) == {'log_history', 'count_history', 'max_length'}:
        return HistoryBuffer(value['log_history'].numpy(), value['count_history'].numpy(), value['max_length'])
    return value


def get_random_state():
    """The random generators' state as tensors, numbers and tuples: what ``torch.load(weights_only=True)`` reads."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), python=random.getstate(),
                 numpy=(kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian))
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state, generators=('torch', 'numpy', 'python', 'cuda')):
    if 'torch' in generators:
        torch.set_rng_state(state['torch'])
    if 'cuda' in generators and 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    if 'numpy' in generators:
        kind, keys, *rest = state['numpy']
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
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

    def before_run(self, runner):
        runner.logger.info('RandomStateHook: checkpoints carry the random generators\' state, restored on --resume')

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
