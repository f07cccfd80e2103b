"""convnext-mm: the ConvNeXt backbone as a plugin for mmdetection 3.x and mmsegmentation 1.x.

Importing this package registers its classes in mmengine's root registries, where mmdet's and mmseg's registries
find them (their parent), and does nothing else:
- ``MODELS``: the backbones ``ConvNeXt`` and ``ConvNeXtIsotropic``, the neck ``SimpleFeaturePyramid``, the
  channels-first LayerNorm ``ConvNeXtLayerNorm2d``;
- ``OPTIM_WRAPPER_CONSTRUCTORS``: ``ConvNeXtLayerDecayOptimizerConstructor``;
- ``OPTIM_WRAPPERS``: ``CPUAmpOptimWrapper`` (bfloat16 training on the CPU);
- ``HOOKS``: ``RandomStateHook``, ``SafeCheckpointHook``, ``AutocastNetworkHook``, ``BackboneWidthCheckHook``,
  ``CPUMemoryReuseHook``, ``DemoDataHook``, ``EvalProgressBarHook``;
- mmengine's file backend ``atomic_local`` and checkpoint loaders for ``.safetensors`` files and ``hf-hub:`` names
  (new names and prefixes; none of mmengine's is replaced).
A run gets what its config declares: configs import the package with
``custom_imports=dict(imports=['convnext_mm'], allow_failed_imports=False)`` and list the hooks they use.
"""
from .backbone import ConvNeXt
from .checkpoint import convert_state_dict, load_pretrained
from .isotropic import ConvNeXtIsotropic
from .simple_fpn import SimpleFeaturePyramid
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor
from .mixed_precision import AutocastNetworkHook, CPUAmpOptimWrapper
from .resume import RandomStateHook, SafeCheckpointHook
from .width_check import BackboneWidthCheckHook
from .demo import DemoDataHook, EvalProgressBarHook

__all__ = [
    'ConvNeXt', 'ConvNeXtIsotropic', 'SimpleFeaturePyramid', 'ConvNeXtLayerDecayOptimizerConstructor',
    'convert_state_dict', 'load_pretrained', 'AutocastNetworkHook', 'CPUAmpOptimWrapper', 'RandomStateHook',
    'SafeCheckpointHook', 'BackboneWidthCheckHook', 'DemoDataHook', 'EvalProgressBarHook'
]
__version__ = '0.3.0'
