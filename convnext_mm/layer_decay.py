"""Learning rates that decay from the top of a ConvNeXt backbone down, with the official ConvNeXt rules.

The rule is the model's: each backbone answers ``get_layer_depth(param_name, prefix, decay_type, num_layers)``
(mmpretrain's protocol; :meth:`convnext_mm.blocks.ConvNeXtBase.get_layer_depth`), and a parameter of layer id
``i`` gets ``lr = base_lr * decay_rate ** (num_layers + 1 - i)``. The paper's detection and segmentation results
were tuned with these rules (``layer_wise``, ``stage_wise``; see :meth:`convnext_mm.backbone.ConvNeXt.layer_id`),
so they are kept exactly. With ``stage_wise`` the head's id grows with num_layers while the stages' ids do not, so
num_layers=12 decays the four stages harder than num_layers=6; the official segmentation configs rely on that.

Weight decay is 0 for every 1-D parameter and every bias, the configured value otherwise, unless one of
mmengine's ``custom_keys``, ``norm_decay_mult`` or ``bias_decay_mult`` says otherwise (see
``ConvNeXtLayerDecayOptimizerConstructor``).
"""
import numbers

from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm, _InstanceNorm
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from .blocks import DECAY_TYPES

PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers', 'custom_keys', 'bias_decay_mult', 'norm_decay_mult')
CUSTOM_KEY_FIELDS = ('lr_mult', 'decay_mult')
# The layers mmengine's DefaultOptimWrapperConstructor treats as norms (LayerNorm2d is a LayerNorm).
NORM_LAYERS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def amp_device_available():
    """Whether mmengine's AmpOptimWrapper can build here (its own condition)."""
    return is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()


def layer_depth_answerer(model):
    """(the module that answers ``get_layer_depth``, the prefix of its parameter names in ``model``): ``model``'s
    backbone, or ``model`` itself (a backbone alone)."""
    backbone = getattr(model, 'backbone', None)
    if callable(getattr(backbone, 'get_layer_depth', None)):
        return backbone, 'backbone.'
    if callable(getattr(model, 'get_layer_depth', None)):
        return model, ''
    found = 'no backbone attribute' if backbone is None else f'backbone of type {type(backbone).__name__}'
    raise TypeError(f'ConvNeXtLayerDecayOptimizerConstructor needs a model whose backbone (or which itself) answers '
                    f'get_layer_depth, as convnext_mm\'s ConvNeXt and ConvNeXtIsotropic do; got '
                    f'{type(model).__name__} with {found}. Use another optim_wrapper.constructor (e.g. '
                    'DefaultOptimWrapperConstructor) for other backbones')


def format_table(groups, header):
    lines = [header, f'{"layer":>5} {"lr scale":>10} {"weight decay":>12} {"tensors":>7} {"params":>11}']
    for group in groups:
        numel = sum(p.numel() for p in group['params'])
        lines.append(f'{group["layer_id"]:>5} {group["lr_scale"]:>10.6g} {group["weight_decay"]:>12.6g} '
                     f'{len(group["params"]):>7} {numel:>11,}')
    return '\n'.join(lines)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ConvNeXtLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """mmengine optimizer-wrapper constructor with the official ConvNeXt layer-wise learning-rate decay.

    Select it with ``optim_wrapper=dict(constructor='ConvNeXtLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=..., weight_decay=...), paramwise_cfg=dict(...))``. The layer ids are the
    model's answer: its ``backbone`` (or the model itself) answers ``get_layer_depth`` (a DDP wrapper's
    ``.module`` is unwrapped).

    ``paramwise_cfg`` keys:
        decay_rate (required): R in (0, 1]; 1 disables the decay.
        num_layers (required): N, at least ``4 + (stage-2 depth - 1) // 3`` for layer_wise (6 for tiny,
            12 for small and larger) and at least 4 for stage_wise; the depth of an isotropic ConvNeXt.
        decay_type: 'layer_wise' (default) or 'stage_wise'.
        custom_keys: ``{substring: dict(lr_mult=..., decay_mult=...)}`` as in mmengine: the longest key found
            in a parameter's full name wins (ties: alphabetical). ``lr_mult`` multiplies the decayed lr;
            ``decay_mult`` sets weight decay to ``weight_decay * decay_mult``. A field left out keeps the
            value the other rules give.
        norm_decay_mult: weight decay of norm-layer parameters becomes ``weight_decay * norm_decay_mult``.
        bias_decay_mult: same for every other bias.
    Without these the official split holds: 0 for 1-D parameters and biases (norms, layer scale, GRN),
    ``weight_decay`` otherwise. Frozen parameters (``requires_grad=False``) are left out.
    Param groups carry ``layer_id`` and ``lr_scale``; each group's lr keeps its ratio to the others under
    mmengine's multiplicative LR schedulers (LinearLR, MultiStepLR, PolyLR with eta_min=0, ...).
    """

    def _validate_cfg(self):
        if self.optim_wrapper_cfg.get('type') == 'AmpOptimWrapper' and not amp_device_available():
            # mmengine's AmpOptimWrapper would stop later with a bare assertion; say what to write.
            raise ValueError("optim_wrapper.type='AmpOptimWrapper' (the paper's fp16 AMP) needs a GPU, and this "
                             'machine has none: train in fp32 with --cfg-options optim_wrapper.type=OptimWrapper '
                             "(this project's tools/train.py does so by itself on a CPU)")
        cfg = self.paramwise_cfg
        if not isinstance(cfg, dict):
            raise TypeError(f'ConvNeXtLayerDecayOptimizerConstructor: paramwise_cfg must be a dict, got {cfg!r}')
        unknown = sorted(set(cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: unsupported paramwise_cfg keys {unknown}; '
                             f'supported are {list(PARAMWISE_KEYS)}')
        for key in ('decay_rate', 'num_layers'):
            if key not in cfg:
                raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: paramwise_cfg needs {key} '
                                 '(the paper: decay_rate=0.95 or 0.9, num_layers=6 for tiny, 12 for larger)')
        decay_type = cfg.get('decay_type', 'layer_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: unknown decay_type {decay_type!r}; '
                             f'choose one of {list(DECAY_TYPES)}')
        rate = cfg['decay_rate']
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 < rate <= 1:
            raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: decay_rate={rate!r} must be a number in '
                             '(0, 1]; 1 means no decay')
        num_layers = cfg['num_layers']
        if isinstance(num_layers, bool) or not isinstance(num_layers, int):
            raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: num_layers={num_layers!r} must be an int')
        for key in ('bias_decay_mult', 'norm_decay_mult'):
            if key in cfg and (isinstance(cfg[key], bool) or not isinstance(cfg[key], numbers.Real)):
                raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: {key}={cfg[key]!r} must be a number')
        custom_keys = cfg.get('custom_keys', {})
        if not isinstance(custom_keys, dict) or not all(isinstance(v, dict) for v in custom_keys.values()):
            raise TypeError('ConvNeXtLayerDecayOptimizerConstructor: custom_keys must map name substrings to '
                            f'dicts, got {custom_keys!r}')
        for key, fields in custom_keys.items():
            unknown = sorted(set(fields) - set(CUSTOM_KEY_FIELDS))
            if unknown:
                raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: custom_keys[{key!r}] has unsupported '
                                 f'fields {unknown}; supported are {list(CUSTOM_KEY_FIELDS)}')
        for name, value in (('lr', self.base_lr), ('weight_decay', self.base_wd)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: optimizer.{name}={value!r}; set it to '
                                 'a number (the per-layer values are derived from it; weight_decay=0 disables '
                                 'weight decay)')

    def add_params(self, params, module, prefix='', is_dcn_module=None):
        """Append one param group per (layer id, lr, weight decay) of ``module``'s trainable parameters."""
        cfg = self.paramwise_cfg
        decay_type = cfg.get('decay_type', 'layer_wise')
        rate, num_layers = cfg['decay_rate'], cfg['num_layers']
        answerer, backbone_prefix = layer_depth_answerer(module)
        groups = {}
        frozen = 0
        for name, param, owner in self._named_parameters(module):
            if not param.requires_grad:
                frozen += 1
                continue
            try:
                layer_id, total_layers = answerer.get_layer_depth(name, backbone_prefix, decay_type=decay_type,
                                                                  num_layers=num_layers)
            except ValueError as error:
                raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: {error}') from None
            lr_scale = rate**(total_layers - layer_id - 1) * self._lr_mult(name)
            weight_decay = self._weight_decay(name, param, owner)
            group = groups.setdefault((layer_id, lr_scale, weight_decay), dict(
                params=[], lr=self.base_lr * lr_scale, weight_decay=weight_decay, layer_id=layer_id,
                lr_scale=lr_scale))
            group['params'].append(param)

        ordered = [groups[key] for key in sorted(groups)]
        params.extend(ordered)
        header = (f'ConvNeXt {decay_type} lr decay: decay_rate={rate}, num_layers={num_layers}, base lr '
                  f'{self.base_lr}, {len(ordered)} param groups, {frozen} frozen parameters left out')
        MMLogger.get_current_instance().info(format_table(ordered, header))

    @staticmethod
    def _named_parameters(module):
        """(full name, parameter, module owning it), each parameter once."""
        seen = set()
        for module_name, owner in module.named_modules():
            for param_name, param in owner.named_parameters(recurse=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f'{module_name}.{param_name}' if module_name else param_name), param, owner

    def _custom_fields(self, name):
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        # mmengine's rule: the longest matching key, ties broken alphabetically.
        for key in sorted(sorted(custom_keys), key=len, reverse=True):
            if key in name:
                return custom_keys[key]
        return {}

    def _lr_mult(self, name):
        return self._custom_fields(name).get('lr_mult', 1.)

    def _weight_decay(self, name, param, owner):
        cfg = self.paramwise_cfg
        custom = self._custom_fields(name)
        if 'decay_mult' in custom:
            return self.base_wd * custom['decay_mult']
        if isinstance(owner, NORM_LAYERS) and 'norm_decay_mult' in cfg:
            return self.base_wd * cfg['norm_decay_mult']
        is_bias = name.rsplit('.', 1)[-1] == 'bias'
        if is_bias and 'bias_decay_mult' in cfg:
            return self.base_wd * cfg['bias_decay_mult']
        return 0. if param.ndim == 1 or is_bias else self.base_wd
