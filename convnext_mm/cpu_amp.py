"""bfloat16 mixed-precision training on the CPU: ``CPUAmpOptimWrapper``, registered in mmengine's, mmdet's and
mmseg's ``OPTIM_WRAPPERS``.

mmengine's AmpOptimWrapper refuses to build without CUDA. This wrapper is mmengine's plain OptimWrapper (fp32
parameters, gradients and optimizer state; no loss scaling, which bfloat16 with float32's exponent range does not
need) whose ``optim_context`` runs the network's layers under ``torch.autocast('cpu', dtype=torch.bfloat16)``:
the backbone and neck (the model's ``extract_feat``) and each head's ``forward``, whose outputs go on in float32;
losses, box coding, proposal NMS and RoIAlign run in float32 with autocast off, as mmcv's CPU NMS and RoIAlign take
float32 only (the split of :func:`convnext_mm.mixed_precision.autocast_network`, here in training). A model
without ``extract_feat`` runs its whole loss computation under autocast, as mmengine's AmpOptimWrapper would.
Inside the layers, autocast's own rules: convolutions and Linears in bfloat16 (oneDNN), LayerNorm's statistics in
float32 (PyTorch's kernel), GRN's norms in float32 (convnext_mm/backbone.py).

In a config::

    optim_wrapper = dict(type='CPUAmpOptimWrapper', optimizer=..., constructor=..., paramwise_cfg=...)

``tools/train.py --amp`` on a machine without CUDA selects it; mmdet's and mmseg's own tools/train.py take it from
the config (``--cfg-options optim_wrapper.type=CPUAmpOptimWrapper``). Its speed and the demo's metrics against
fp32: docs/benchmarks.md.
"""
import contextlib
import threading

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from .mixed_precision import HEAD_NAMES, layer_calls, to_float32, unwrap_model

# Heads whose forward runs in bfloat16 besides HEAD_NAMES: mmseg's auxiliary heads.
TRAINED_HEAD_NAMES = HEAD_NAMES + ('auxiliary_head', )
_STATE = threading.local()  # whether this thread is inside a CPUAmpOptimWrapper's optim_context


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """mmengine's OptimWrapper with the network's layers in bfloat16 on the CPU (see the module doc)."""

    # AmpOptimWrapper's keys are accepted, so one config serves both: loss_scale has no use in bfloat16 and is
    # ignored; dtype must say bfloat16.
    def __init__(self, *args, dtype='bfloat16', loss_scale=None, use_fsdp=False, **kwargs):
        if dtype not in ('bfloat16', torch.bfloat16, None):
            raise ValueError(f'CPUAmpOptimWrapper trains in bfloat16; got dtype={dtype!r}. Remove dtype from '
                             "optim_wrapper, or set dtype='bfloat16' (float16 on a CPU: use a GPU and "
                             "mmengine's AmpOptimWrapper)")
        if use_fsdp:
            raise ValueError('CPUAmpOptimWrapper does not run FSDP (use_fsdp=True); remove use_fsdp')
        super().__init__(*args, **kwargs)
        self._wrapped = set()

    @contextlib.contextmanager
    def optim_context(self, model):
        self._wrap_layers(model)
        with super().optim_context(model):
            outer = getattr(_STATE, 'active', False)
            _STATE.active = True
            try:
                if self._whole_step:
                    with torch.autocast('cpu', dtype=torch.bfloat16):
                        yield
                else:
                    yield
            finally:
                _STATE.active = outer

    def _wrap_layers(self, model):
        """Once per model: its ``extract_feat`` and heads' ``forward`` under bf16 autocast inside the context."""
        inner = unwrap_model(model)
        self._whole_step = not hasattr(inner, 'extract_feat')
        if self._whole_step or id(inner) in self._wrapped:
            return
        self._wrapped.add(id(inner))
        for owner, name in layer_calls(inner, TRAINED_HEAD_NAMES):
            _wrap(owner, name)


def _wrap(owner, name):
    method = getattr(owner, name)
    if getattr(method, 'cpu_amp', False):
        return

    def in_bf16(*args, **kwargs):
        if not getattr(_STATE, 'active', False):
            return method(*args, **kwargs)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outputs = method(*args, **kwargs)
        return to_float32(outputs)

    in_bf16.cpu_amp = True
    setattr(owner, name, in_bf16)

