"""A guest in the host's process: ``import convnext_mm`` adds its classes (and new names in mmengine's extension
points) and changes nothing else of torch, pickling, mmengine or the hosts; host projects register their own names
whichever is imported first; mixed precision leaves the model's methods alone, so copies compute with their own
weights."""
import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from project import ROOT

# Run in a new interpreter: this one imported convnext_mm long ago. The hosts and their registries are loaded
# first (mmdet's and mmseg's modules registered), then the state is taken before and after the import.
SNAPSHOT = textwrap.dedent('''
    import copyreg, json, os, sys, warnings
    import torch
    import mmengine.fileio.backends.registry_utils as backend_registry
    import mmengine.registry as root
    from mmengine.runner.checkpoint import CheckpointLoader
    import mmdet.registry, mmseg.registry
    from mmdet.utils import register_all_modules as register_mmdet
    from mmseg.utils import register_all_modules as register_mmseg
    register_mmdet(init_default_scope=False)
    register_mmseg(init_default_scope=False)
    from torch.nn.modules import module as torch_module

    REGISTRIES = ['MODELS', 'HOOKS', 'OPTIM_WRAPPERS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'DATASETS', 'TRANSFORMS',
                  'METRICS', 'VISUALIZERS', 'LOOPS', 'RUNNERS', 'PARAM_SCHEDULERS', 'OPTIMIZERS', 'MODEL_WRAPPERS']

    def state():
        registries = {}
        for scope, module in (('mmengine', root), ('mmdet', mmdet.registry), ('mmseg', mmseg.registry)):
            for name in REGISTRIES:
                registry = getattr(module, name, None)
                if registry is not None:
                    registries[f'{scope}.{name}'] = {k: repr(v) for k, v in registry.module_dict.items()}
        return dict(
            safe_globals=sorted(map(repr, torch.serialization.get_safe_globals())),
            copyreg=sorted(map(repr, copyreg.dispatch_table)),
            backends={k: repr(v) for k, v in backend_registry.backends.items()},
            backend_prefixes={k: repr(v) for k, v in backend_registry.prefix_to_backends.items()},
            loaders={k: repr(v) for k, v in CheckpointLoader._schemes.items()},
            global_hooks={name: len(getattr(torch_module, name)) for name in dir(torch_module)
                          if name.startswith('_global_') and isinstance(getattr(torch_module, name), dict)},
            torch=dict(threads=torch.get_num_threads(), default_dtype=repr(torch.get_default_dtype()),
                       deterministic=torch.are_deterministic_algorithms_enabled(),
                       matmul_precision=torch.get_float32_matmul_precision(),
                       mkldnn=torch.backends.mkldnn.enabled, grad=torch.is_grad_enabled()),
            environ=dict(os.environ),
            warning_filters=len(warnings.filters),
            registries=registries)

    before = state()
    import convnext_mm
    after = state()
    print(json.dumps(dict(before=before, after=after)))
''')


@pytest.fixture(scope='module')
def snapshots():
    result = subprocess.run([sys.executable, '-c', SNAPSHOT], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('part', ['safe_globals', 'copyreg', 'global_hooks', 'torch', 'environ',
                                  'warning_filters'])
def test_the_import_changes_nothing_of_torch_pickling_or_the_process(snapshots, part):
    assert snapshots['after'][part] == snapshots['before'][part]


@pytest.mark.parametrize('part', ['backends', 'backend_prefixes', 'loaders'])
def test_mmengine_extension_points_only_gain_new_names(snapshots, part):
    before, after = snapshots['before'][part], snapshots['after'][part]
    assert {key: after[key] for key in before} == before  # nothing replaced
    added = sorted(set(after) - set(before))
    assert added == {'backends': ['atomic_local'], 'backend_prefixes': [],
                     'loaders': [r'(?!\w+://).*\.safetensors$', 'hf-hub:']}[part]


def test_the_classes_are_registered_once_in_mmengine_root_registries_only(snapshots):
    before, after = snapshots['before']['registries'], snapshots['after']['registries']
    added = {}
    for registry, names in after.items():
        assert {name: after[registry][name] for name in before[registry]} == before[registry], registry
        new = sorted(set(names) - set(before[registry]))
        if new:
            added[registry] = new
    assert added == {
        'mmengine.MODELS': ['ConvNeXt', 'ConvNeXtIsotropic', 'ConvNeXtLayerNorm2d', 'SimpleFeaturePyramid'],
        'mmengine.HOOKS': ['AutocastNetworkHook', 'BackboneWidthCheckHook', 'CPUMemoryReuseHook',
                           'CPUTrainingMemoryHook', 'DemoDataHook', 'EvalProgressBarHook', 'RandomStateHook',
                           'SafeCheckpointHook'],
        'mmengine.OPTIM_WRAPPERS': ['CPUAmpOptimWrapper'],
        'mmengine.OPTIM_WRAPPER_CONSTRUCTORS': ['ConvNeXtLayerDecayOptimizerConstructor'],
    }


def test_both_hosts_build_the_classes_through_their_own_registries():
    import convnext_mm
    from mmdet.registry import HOOKS as DET_HOOKS
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.registry import OPTIM_WRAPPERS as SEG_OPTIM_WRAPPERS
    arch = dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64])
    for registry in (DET_MODELS, SEG_MODELS):
        with registry.switch_scope_and_registry(registry.scope) as scoped:
            assert isinstance(scoped.build(dict(type='ConvNeXt', arch=arch)), convnext_mm.ConvNeXt)
    assert DET_HOOKS.get('RandomStateHook') is convnext_mm.RandomStateHook
    assert SEG_OPTIM_WRAPPERS.get('CPUAmpOptimWrapper') is convnext_mm.CPUAmpOptimWrapper


HOST_PROJECT_LN2D = textwrap.dedent('''
    import torch.nn as nn
    from mmdet.registry import MODELS

    @MODELS.register_module()
    class LN2d(nn.Module):  # as mmdet's projects/ViTDet registers its own
        def __init__(self, normalized_shape, eps=1e-6):
            super().__init__()
''')


@pytest.mark.parametrize('order', ['host project first', 'convnext_mm first'])
def test_a_host_project_registers_its_own_ln2d_whichever_is_imported_first(order):
    imports = ['import convnext_mm', HOST_PROJECT_LN2D]
    if order == 'host project first':
        imports.reverse()
    script = '\n'.join(imports) + textwrap.dedent('''
        from mmdet.registry import MODELS
        from mmengine.registry import init_default_scope
        init_default_scope('mmdet')
        assert MODELS.get('LN2d') is LN2d
        norm = MODELS.build(dict(type='ConvNeXtLayerNorm2d', normalized_shape=8))
        assert type(norm).__module__.startswith('convnext_mm.') and type(norm).__name__ == 'LayerNorm2d'
        print('ok')
    ''')
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-3000:]
