"""convnext-mm: the ConvNeXt backbone as a plugin for mmdetection 3.x and mmsegmentation 1.x.

Importing this package registers, in mmdet's and in mmseg's registries (whichever are installed):
- ``MODELS``: the backbones ``ConvNeXt`` and ``ConvNeXtIsotropic``, the neck ``SimpleFeaturePyramid``;
- ``OPTIM_WRAPPER_CONSTRUCTORS``: ``ConvNeXtLayerDecayOptimizerConstructor``;
- ``OPTIM_WRAPPERS``: ``CPUAmpOptimWrapper`` (bfloat16 mixed-precision training on the CPU);
- ``HOOKS``: ``RandomStateHook``, ``AutocastNetworkHook``, ``DemoDataHook``, ``EvalProgressBarHook``;
and, for every mmengine loader, safe loading of mmengine checkpoints, ``.safetensors`` and ``hf-hub:`` files.
Configs import it with ``custom_imports=dict(imports=['convnext_mm'], allow_failed_imports=False)``.
"""
from .backbone import ConvNeXt
from .checkpoint import convert_state_dict, load_pretrained
from .isotropic import ConvNeXtIsotropic
from .simple_fpn import SimpleFeaturePyramid
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor
from . import resume  # noqa: F401  safe loading of mmengine checkpoints, atomic saves, RandomStateHook
from . import demo, mixed_precision  # noqa: F401  hooks: DemoDataHook, EvalProgressBarHook; AutocastNetworkHook
from . import cpu_amp  # noqa: F401  OPTIM_WRAPPERS: CPUAmpOptimWrapper (bf16 training on the CPU)

__all__ = ['ConvNeXt', 'ConvNeXtLayerDecayOptimizerConstructor', 'convert_state_dict', 'load_pretrained']
__all__ += ['ConvNeXtIsotropic', 'SimpleFeaturePyramid']
__version__ = '0.2.0'
