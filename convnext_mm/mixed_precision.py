"""Mixed precision for whole detectors and segmentors: the network's layers in bfloat16 (float16 on CUDA), what
comes between and after them in float32.

Autocast alone (mmengine's ``test_cfg=dict(fp16=True)``, which runs a loop's whole ``test_step`` under it) is too
much for a detector: the RPN's and box heads' outputs come out in bfloat16, so boxes are decoded with 8 significant
bits (a coordinate near 1000 rounded to a multiple of 4 pixels) and handed to mmcv's CPU NMS and RoIAlign, which
take float32 only ("expected scalar type Float but found BFloat16", deep in mmcv).

The line is drawn with PyTorch's forward hooks: :func:`float32_outputs` adds one to each of the model's layer
modules (backbone, neck, every head; a segmentation head's final ``conv_seg``, as mmseg calls its heads' ``forward``
directly), which turns their floating-point outputs to float32 while autocast is on. Inside a layer autocast keeps
its rules (convolutions and Linears in bfloat16, LayerNorm statistics in float32); everything between layers (box
decoding, NMS, RoIAlign, mask pasting, resizing, the sliding window's sums, the losses) sees float32 tensors, and
elementwise arithmetic stays in the precision of its inputs under autocast. The hooks hold no reference to a model,
so a ``copy.deepcopy`` of it (an EMA or teacher model) computes with its own weights, and adding them twice adds
nothing.

Two entries, both declared in a config:
- :class:`AutocastNetworkHook` (``custom_hooks``): before a validation or test loop with ``fp16=True``.
- :class:`CPUAmpOptimWrapper` (``optim_wrapper.type``): bfloat16 training on the CPU.
``tools/infer.py --amp`` and ``tools/benchmark.py --amp`` use :func:`autocast_layers` directly.
"""
import contextlib
import threading

import torch
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS, OPTIM_WRAPPERS
from mmengine.runner.amp import autocast

# What mmdet and mmseg call the layers predictions and losses come from; a model may lack some (a single-stage
# detector has no rpn_head). Heads of other names stay in float32: correct, not faster.
HEAD_NAMES = ('rpn_head', 'bbox_head', 'mask_head', 'decode_head', 'auxiliary_head')
_TRAINING = threading.local()  # whether this thread is inside a CPUAmpOptimWrapper's optim_context


class UnsupportedModelError(TypeError):
    """The model is not one whose layers :func:`float32_outputs` can tell from its post-processing."""


def unwrap_model(model):
    """The detector or segmentor inside mmengine's TTA model and DDP wrappers."""
    while hasattr(model, 'module'):
        model = model.module
    return model


def layer_modules(model):
    """The modules of ``model`` whose outputs go on in float32: backbone, neck, each head (a cascade's ModuleList:
    one per stage) and each segmentation head's ``conv_seg``."""
    modules = [getattr(model, name) for name in ('backbone', 'neck') if getattr(model, name, None) is not None]
    for name, module in model.named_modules():
        if name.split('.')[-1] in HEAD_NAMES:
            heads = module if isinstance(module, torch.nn.ModuleList) else [module]
            modules += list(heads)
            modules += [head.conv_seg for head in heads if isinstance(getattr(head, 'conv_seg', None),
                                                                     torch.nn.Module)]
    return modules


def float32_outputs(model):
    """Hand the outputs of ``model``'s layers (:func:`layer_modules`) on in float32 whenever autocast is on: in
    inference, and in training inside a :class:`CPUAmpOptimWrapper` step (a GPU's AmpOptimWrapper training keeps
    mmengine's behaviour). Adds a forward hook once per module; returns ``model``."""
    inner = unwrap_model(model)
    if getattr(inner, 'backbone', None) is None:
        raise UnsupportedModelError(
            'mixed precision (--amp, test_cfg.fp16, CPUAmpOptimWrapper) runs mmdet detectors and mmseg segmentors '
            f'(a model with a backbone); {type(inner).__name__} is neither: run it in float32 (drop --amp, set '
            "test_cfg.fp16=False, or optim_wrapper.type='OptimWrapper')")
    for module in layer_modules(inner):
        if not to_float32_hook_count(module):
            module.register_forward_hook(_to_float32_hook)
    return model


def to_float32_hook_count(module):
    """How many of :func:`float32_outputs`' hooks ``module`` has (0 or 1)."""
    return sum(hook is _to_float32_hook for hook in module._forward_hooks.values())


def _to_float32_hook(module, args, output):
    if module.training and not getattr(_TRAINING, 'active', False):
        return None
    if not any(torch.is_autocast_enabled(device) for device in ('cpu', 'cuda')):
        return None
    return to_float32(output)


def to_float32(outputs):
    """``outputs`` with every floating-point tensor in it, in tuples, lists and dicts too, as float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(to_float32(output) for output in outputs)
    if isinstance(outputs, dict):
        return type(outputs)((key, to_float32(value)) for key, value in outputs.items())
    return outputs


@contextlib.contextmanager
def autocast_layers(model, dtype=None):
    """Run ``model``'s calls in this context with its layers under mmengine's autocast (``dtype``: None for
    mmengine's choice, bfloat16 on the CPU and float16 on CUDA) and the rest in float32."""
    float32_outputs(model)
    with autocast(device_type=next(model.parameters()).device.type, dtype=dtype):
        yield model


@HOOKS.register_module()
class AutocastNetworkHook(Hook):
    """:func:`float32_outputs` on the runner's model before a validation or test loop whose config sets
    ``fp16=True`` (``val_cfg``/``test_cfg``, mmengine's switch, which runs the loop under autocast): without it the
    loop would run mmcv's NMS and box decoding in bfloat16 too. Without ``fp16`` it does nothing. The paper's
    configs list it in ``custom_hooks``, so mmdet's and mmseg's own tools get the same
    (``--cfg-options test_cfg.fp16=True``)."""

    def __init__(self):
        self._logged = set()

    def before_val(self, runner):
        self._apply(runner, runner.val_loop, 'val')

    def before_test(self, runner):
        self._apply(runner, runner.test_loop, 'test')

    def _apply(self, runner, loop, name):
        if not getattr(loop, 'fp16', False):
            return
        float32_outputs(runner.model)
        if name not in self._logged:
            self._logged.add(name)
            runner.logger.info(f'{name}_cfg.fp16: the layers under mmengine\'s autocast (bfloat16 on the CPU, '
                               'float16 on CUDA), their outputs and the post-processing in float32')


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """bfloat16 mixed-precision training on the CPU: mmengine's OptimWrapper (float32 parameters, gradients and
    optimizer state; no loss scaling, which bfloat16 with float32's exponent range does not need) whose
    ``optim_context`` runs the step under ``torch.autocast('cpu', dtype=torch.bfloat16)``, the layers' outputs going
    on in float32 (:func:`float32_outputs`): losses, box coding, proposal NMS and RoIAlign in float32.

    ``optim_wrapper = dict(type='CPUAmpOptimWrapper', optimizer=..., constructor=..., paramwise_cfg=...)``.
    mmengine's AmpOptimWrapper refuses to build without CUDA; its keys are accepted here, so one config serves both:
    ``loss_scale`` has no use in bfloat16 and is ignored, ``dtype`` must say bfloat16.
    """

    def __init__(self, *args, dtype='bfloat16', loss_scale=None, use_fsdp=False, **kwargs):
        if dtype not in ('bfloat16', torch.bfloat16, None):
            raise ValueError(f'CPUAmpOptimWrapper trains in bfloat16; got dtype={dtype!r}. Remove dtype from '
                             "optim_wrapper, or set dtype='bfloat16' (float16 on a CPU: use a GPU and "
                             "mmengine's AmpOptimWrapper)")
        if use_fsdp:
            raise ValueError('CPUAmpOptimWrapper does not run FSDP (use_fsdp=True); remove use_fsdp')
        super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def optim_context(self, model):
        if getattr(unwrap_model(model), 'backbone', None) is not None:
            float32_outputs(model)
        with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
            outer = getattr(_TRAINING, 'active', False)
            _TRAINING.active = True
            try:
                yield
            finally:
                _TRAINING.active = outer
