"""The first check of a run: the module that reads the backbone's maps (the neck, or a segmentor's heads without
one) expects the widths the backbone outputs.

A config written for another ConvNeXt size otherwise stops in torch's "expected input[2, 96, 40, 40] to have 128
channels", naming neither the backbone nor the fix. :class:`BackboneWidthCheckHook` (in the configs'
``custom_hooks``) runs :func:`check_consumer_widths` on the runner's model before training, validation or testing;
the tools that build a model without a runner (``tools/infer.py``, ``tools/export_onnx.py``) call it themselves.
"""
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .blocks import ConvNeXtBase
from .mixed_precision import unwrap_model


def check_consumer_widths(model):
    """Raise ValueError, naming the backbone and the line to write, unless the modules that read the ConvNeXt
    backbone's maps in ``model`` (a detector or segmentor, or a wrapper of one) expect their widths. Models with
    another backbone, and readers whose ``in_channels`` means something else (a list of another length, as the
    simple pyramid's level widths), are left to their own checks."""
    model = unwrap_model(model)
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, ConvNeXtBase):  # ConvNeXt, ConvNeXtIsotropic
        return
    channels = backbone.out_channels
    neck = getattr(model, 'neck', None)
    readers = [('neck', neck)] if neck is not None else [
        (name, getattr(model, name)) for name in ('decode_head', 'auxiliary_head')
        if getattr(model, name, None) is not None]
    for where, reader in readers:
        heads = reader if isinstance(reader, (list, tuple, torch.nn.ModuleList)) else [reader]
        for head in heads:
            _check_reader(backbone, channels, where, head)


def _check_reader(backbone, channels, where, reader):
    expected = getattr(reader, 'in_channels', None)
    in_index = getattr(reader, 'in_index', None)  # mmseg's heads select their inputs
    if isinstance(in_index, int) and isinstance(expected, int) and -len(channels) <= in_index < len(channels):
        got = channels[in_index]
    elif isinstance(in_index, (list, tuple)) and all(-len(channels) <= i < len(channels) for i in in_index):
        got = [channels[i] for i in in_index]
    elif in_index is None:
        got = channels
    else:
        return
    if isinstance(expected, (list, tuple)) and isinstance(got, list) and len(expected) == len(got):
        if list(expected) == got:
            return
        expected = list(expected)
    elif not (isinstance(expected, int) and isinstance(got, int)) or expected == got:
        return
    raise ValueError(
        f'{type(reader).__name__} (model.{where}) expects in_channels={expected}, but the backbone, '
        f'{backbone.arch_name()}, outputs {channels} channels at out_indices {backbone.out_indices}. Write '
        f'{where}=dict(in_channels={got}) in the config\'s model, or pick the arch the {where} was written for.')


@HOOKS.register_module()
class BackboneWidthCheckHook(Hook):
    """:func:`check_consumer_widths` on the runner's model before it trains, validates or tests."""

    def before_run(self, runner):
        check_consumer_widths(runner.model)
