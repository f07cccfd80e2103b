"""Loading a trained detector or segmentor (a checkpoint of ``tools/train.py``) into the model of a config, for
the tools that run or export it (``tools/infer.py``, ``tools/export_onnx.py``).

mmengine's loader only warns about tensors that are missing, unexpected or of another shape, and leaves those
parameters randomly initialized; a user would then get a model that predicts noise. Here every tensor must
fit, and an error says which parts of the model differ and what to do: for a checkpoint of a demo run given with
a paper config, the demo config to give instead.
"""
import ast
import glob
import os.path as osp

import torch

from convnext_mm.checkpoint import CheckpointError, StrictLoading, read_checkpoint
from convnext_mm.demo_data import CLASSES as DEMO_CLASSES
from convnext_mm.demo_data import SEG_CLASSES as DEMO_SEG_CLASSES
from convnext_mm.width_check import check_consumer_widths

DEMO_CONFIGS_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', 'demo')
MAX_KEYS_SHOWN = 2
MAX_CLASSES_SHOWN = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint that is not a trained model of the given config; the message says what differs."""


def checkpoint_meta(checkpoint):
    """The checkpoint's ``meta`` dict (mmengine stores ``dataset_meta`` and the config there), or {}."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}


def checkpoint_classes(checkpoint):
    return tuple(checkpoint_meta(checkpoint).get('dataset_meta', {}).get('classes') or ())


def model_state(checkpoint, path):
    """The tensors of a checkpoint saved by mmengine (``state_dict``) or of a bare state dict, without the
    ``module.`` prefix of a wrapped model (as mmengine's loader strips it)."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f'{path} holds no model weights (no state_dict of tensors): give a '
                                      'checkpoint that tools/train.py saved')
    return {key[len('module.'):] if key.startswith('module.') else key: value for key, value in state.items()}


def check_fits(model, checkpoint, checkpoint_path, config_path):
    """Raise :class:`CheckpointMismatchError` unless the checkpoint has every tensor of ``model``, with its
    shape, and nothing else; first, that the model's neck or heads read the backbone's widths (as the configs'
    BackboneWidthCheckHook checks a run), since no checkpoint fits a model that does not."""
    try:
        check_consumer_widths(model)
    except ValueError as error:
        raise CheckpointMismatchError(f'the model of {config_path} cannot run: {error}') from error
    state = model_state(checkpoint, checkpoint_path)
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, StrictLoading):
        # The backbone's own rule (any public layout, all or nothing), as every loader applies it.
        try:
            backbone.fit_prefixed(state, 'backbone.')
        except CheckpointError as error:
            raise CheckpointMismatchError(f'checkpoint {checkpoint_path} does not fit the model of {config_path}: '
                                          f'{error}') from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if not (missing or unexpected or reshaped):
        return state
    problems = []
    if missing:
        problems.append(f"the model's {_parts(missing)} are not in the checkpoint")
    if unexpected:
        problems.append(f"the checkpoint's {_parts(unexpected)} are not in the model")
    if reshaped:
        shown = ', '.join(f'{key} {tuple(state[key].shape)} in the checkpoint, {tuple(expected[key].shape)} in '
                          'the model' for key in reshaped[:MAX_KEYS_SHOWN])
        problems.append(f'{len(reshaped)} tensors differ in shape ({shown})')
    raise CheckpointMismatchError(f'checkpoint {checkpoint_path} does not fit the model of {config_path}: '
                                  f'{"; ".join(problems)}. {fit_hint(checkpoint, config_path)}')


def _parts(keys):
    """'neck.*, rpn_head.* (123 tensors)': the top-level modules that ``keys`` belong to."""
    modules = sorted({key.split('.')[0] for key in keys})
    return f'{", ".join(m + ".*" for m in modules)} ({len(keys)} tensors)'


def fit_hint(checkpoint, config_path):
    """What to give instead of ``config_path``: for a checkpoint of a demo run, the demo config (the one that
    inherits ``config_path`` where there is one); else the config of the checkpoint's classes."""
    classes = checkpoint_classes(checkpoint)
    if classes in (DEMO_CLASSES, DEMO_SEG_CLASSES):
        configs = demo_configs_of(config_path) or sorted(glob.glob(osp.join(DEMO_CONFIGS_DIR, '*.py')))
        names = ' or '.join(osp.relpath(path) for path in configs)
        return f"The checkpoint holds the demo's classes: give the demo config it was trained with, {names}."
    if classes:
        more = ', ...' if len(classes) > MAX_CLASSES_SHOWN else ''
        return (f'Give the config the checkpoint was trained with (it has {len(classes)} classes: '
                f'{", ".join(classes[:MAX_CLASSES_SHOWN])}{more}).')
    return 'Give the config the checkpoint was trained with.'


def demo_configs_of(config_path):
    """The demo configs (configs/demo/*.py) whose ``_base_`` is ``config_path``."""
    target = osp.realpath(config_path)
    return [path for path in sorted(glob.glob(osp.join(DEMO_CONFIGS_DIR, '*.py')))
            if osp.realpath(osp.join(osp.dirname(path), _base_of(path) or '')) == target]


def _base_of(path):
    """The ``_base_ = '...'`` file of a config, or None."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['_base_']
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return None


def load_trained(model, checkpoint_path, config_path):
    """Read ``checkpoint_path`` (:func:`read_checkpoint`), check that it fits ``model`` and load it; returns the
    checkpoint (its ``meta`` has the class names)."""
    checkpoint = read_checkpoint(checkpoint_path)
    model.load_state_dict(check_fits(model, checkpoint, checkpoint_path, config_path))
    return checkpoint
