"""Mixed-precision inference of a whole detector or segmentor: mmengine's autocast over the network's layers only.

mmengine's test and validation loops take ``fp16=True`` (``test_cfg=dict(type='TestLoop', fp16=True)``; mmpretrain's
``tools/test.py --amp`` sets exactly that) and then run the whole ``test_step`` under ``mmengine.runner.amp.autocast``,
which picks bfloat16 on the CPU and float16 on CUDA. That is too much for a detector: its RPN then decodes boxes
in bfloat16 (8 significant bits: a coordinate near 1000 rounded to a multiple of 4 pixels) and hands them to
mmcv's CPU NMS, which takes float32 only ("RuntimeError: expected scalar type Float but found BFloat16", deep in
mmcv); mmcv's CPU RoIAlign is the same.

:func:`autocast_network` draws the line where precision matters: the layers (backbone, neck, and each head's
``forward``: the RPN's convs, the box heads' convs and FCs, the mask heads' convs, the decode head) run under
mmengine's autocast and hand float32 outputs on; everything between and after them (box decoding, NMS, RoIAlign,
mask pasting, the resize of segmentation logits, the sliding window's sums) runs in float32 with autocast off,
also inside a loop's own autocast. The layers are where a detector's and a segmentor's time goes, so this keeps
nearly all of the gain. :class:`AutocastNetworkHook` (in the configs' ``custom_hooks``) applies it where a config's
``val_cfg`` or ``test_cfg`` sets ``fp16=True``.
"""
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner.amp import autocast

# What mmdet and mmseg call the layers a model's predictions come from; a model may lack some (a single-stage
# detector has no rpn_head). Heads of other names (HTC's semantic head, ...) stay in float32: correct, not faster.
HEAD_NAMES = ('rpn_head', 'bbox_head', 'mask_head', 'decode_head')


class UnsupportedModelError(TypeError):
    """The model is not one whose layers :func:`autocast_network` can tell from its post-processing."""


def autocast_network(model, dtype=None):
    """Make ``model`` (an mmdet detector or mmseg segmentor, or a TTA or DDP wrapper of one) predict with its layers
    under mmengine's autocast and the rest in float32; in place, returns ``model``. ``dtype``: the layers' precision;
    None for mmengine's choice, bfloat16 on the CPU and float16 on CUDA.

    Only inference changes: in training mode (``model.train()``) every wrapped call runs as before, so a training
    run that validates with the wrapped model still trains in its own precision.
    """
    inner = unwrap_model(model)
    if not (hasattr(inner, 'extract_feat') and hasattr(inner, 'predict')):
        raise UnsupportedModelError(
            'mixed-precision inference (--amp, test_cfg.fp16) runs mmdet detectors and mmseg segmentors (a model '
            f'with extract_feat and predict); {type(inner).__name__} is neither: test it in float32 (drop --amp, or '
            'set test_cfg.fp16=False)')
    _wrap(inner, 'predict', _in_float32)
    for owner, name in layer_calls(inner):
        _wrap(owner, name, _in_autocast(dtype))
    return model


def unwrap_model(model):
    """The detector or segmentor inside mmengine's TTA model and DDP wrappers."""
    while hasattr(model, 'module'):
        model = model.module
    return model


def layer_calls(model, head_names=HEAD_NAMES):
    """``(owner, method name)`` of the calls that are ``model``'s layers: its ``extract_feat`` (backbone and neck)
    and each head's ``forward`` (a cascade's ModuleList: one per stage)."""
    calls = [(model, 'extract_feat')]
    for name, module in model.named_modules():
        if name.split('.')[-1] in head_names:
            heads = module if isinstance(module, torch.nn.ModuleList) else [module]
            calls += [(head, 'forward') for head in heads]
    return calls


@HOOKS.register_module()
class AutocastNetworkHook(Hook):
    """:func:`autocast_network` on the runner's model before a validation or test loop whose config sets
    ``fp16=True`` (``val_cfg``/``test_cfg``, mmengine's switch): that loop's own autocast would otherwise run mmcv's
    NMS and box decoding in bfloat16 too. Without ``fp16`` it does nothing. The paper's configs list it in
    ``custom_hooks``, so mmdet's and mmseg's own tools get the same (``--cfg-options test_cfg.fp16=True``).
    A model it cannot split stops the loop with :class:`UnsupportedModelError`, which says what to write.
    """

    def __init__(self):
        self._logged = set()

    def before_val(self, runner):
        self._apply(runner, runner.val_loop, 'val')

    def before_test(self, runner):
        self._apply(runner, runner.test_loop, 'test')

    def _apply(self, runner, loop, name):
        if not getattr(loop, 'fp16', False):
            return
        autocast_network(runner.model)  # wraps once, however many validations
        if name not in self._logged:
            self._logged.add(name)
            runner.logger.info(f'{name}_cfg.fp16: the layers under mmengine\'s autocast (bfloat16 on the CPU, '
                               'float16 on CUDA), post-processing in float32')


def _wrap(owner, name, make_wrapper):
    method = getattr(owner, name)
    if getattr(method, 'autocast_network', False):  # applied before: wrap once
        return
    wrapped = make_wrapper(owner, method)
    wrapped.autocast_network = True
    setattr(owner, name, wrapped)


def _in_autocast(dtype):

    def wrapper(owner, method):

        def in_autocast(*args, **kwargs):
            if owner.training:
                return method(*args, **kwargs)
            with autocast(device_type=next(owner.parameters()).device.type, dtype=dtype):
                return to_float32(method(*args, **kwargs))

        return in_autocast

    return wrapper


def _in_float32(owner, method):

    def in_float32(*args, **kwargs):
        if owner.training:
            return method(*args, **kwargs)
        with torch.autocast(device_type=next(owner.parameters()).device.type, enabled=False):
            return method(*args, **kwargs)

    return in_float32


def to_float32(outputs):
    """``outputs`` with every floating-point tensor in it, in tuples, lists and dicts too, as float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(to_float32(output) for output in outputs)
    if isinstance(outputs, dict):
        return type(outputs)((key, to_float32(value)) for key, value in outputs.items())
    return outputs
