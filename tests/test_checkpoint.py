"""Loading pretrained weights: every public layout gives the same outputs; bad files give named errors."""
import logging
import os.path as osp
import re

import numpy as np
import pytest
import torch

from mmengine.logging import MMLogger

from convnext_mm import ConvNeXt
from convnext_mm.checkpoint import CheckpointError, load_pretrained, read_checkpoint

from checkpoint_layouts import (backbone_tensors, ddp_detector_checkpoint, ddp_module_file, fcmae_layout,
                                make_source, mmpretrain_conv_layout, mmpretrain_layout, official_layout,
                                own_backbone_file, own_detector_checkpoint, own_file_before_0_2, renamed, timm_layout)
from project import ROOT
from tiny_models import SMALLEST_ARCH

# A block's tensors under the official names (ours), V1 and V2.
BLOCK_TENSORS = ['gamma', 'dwconv.weight', 'dwconv.bias', 'norm.weight', 'norm.bias', 'pwconv1.weight', 'pwconv1.bias',
                 'pwconv2.weight', 'pwconv2.bias']
V2_BLOCK_TENSORS = ['dwconv.weight', 'dwconv.bias', 'norm.weight', 'norm.bias', 'pwconv1.weight', 'pwconv1.bias',
                    'grn.gamma', 'grn.beta', 'pwconv2.weight', 'pwconv2.bias']


def official_tiny_keys():
    """The backbone tensors of the official convnext_tiny_1k_224.pth, by their names there."""
    keys = [f'downsample_layers.0.{j}.{p}' for j in (0, 1) for p in ('weight', 'bias')]
    keys += [f'downsample_layers.{i}.{j}.{p}' for i in (1, 2, 3) for j in (0, 1) for p in ('weight', 'bias')]
    keys += [f'stages.{s}.{b}.{t}' for s, depth in enumerate([3, 3, 9, 3]) for b in range(depth) for t in BLOCK_TENSORS]
    return keys


def test_our_parameter_names_are_the_official_ones():
    model = ConvNeXt(arch='tiny')
    assert sorted(backbone_tensors(model)) == sorted(official_tiny_keys())
    assert len(official_tiny_keys()) == 16 + 18 * 9
    v2 = ConvNeXt(arch=SMALLEST_ARCH, use_grn=True)
    assert sorted(backbone_tensors(v2)) == sorted(
        [k for k in (f'downsample_layers.{i}.{j}.{p}' for i in range(4) for j in (0, 1) for p in ('weight', 'bias'))]
        + [f'stages.{s}.{b}.{t}' for s, depth in enumerate(SMALLEST_ARCH['depths']) for b in range(depth)
           for t in V2_BLOCK_TENSORS])


def test_layout_names_are_the_real_files_names():
    """The test layouts below, on ConvNeXt-T, give the key names of the real files (a few written out)."""
    keys = official_tiny_keys()
    timm = {renamed(k, 'timm') for k in keys}
    assert {'stem.0.weight', 'stem.1.bias', 'stages.1.downsample.0.weight', 'stages.3.downsample.1.bias',
            'stages.2.blocks.8.conv_dw.weight', 'stages.0.blocks.0.mlp.fc1.weight', 'stages.3.blocks.2.mlp.fc2.bias',
            'stages.1.blocks.2.gamma', 'stages.0.blocks.1.norm.weight'} <= timm
    mmpretrain = {renamed(k, 'mmpretrain') for k in keys}
    assert {'downsample_layers.0.0.weight', 'downsample_layers.3.1.bias', 'stages.2.8.depthwise_conv.weight',
            'stages.0.0.pointwise_conv1.weight', 'stages.3.2.pointwise_conv2.bias', 'stages.1.2.gamma'} <= mmpretrain
    assert len(timm) == len(mmpretrain) == len(keys)


# Each layout and the output norms its files hold (a classification file has none; mmpretrain's keeps norm3).
LAYOUTS = {official_layout: (), timm_layout: (), mmpretrain_layout: (3, ), mmpretrain_conv_layout: (3, ),
           own_backbone_file: (0, 1, 2, 3), own_file_before_0_2: (0, 1, 2, 3), own_detector_checkpoint: (0, 1, 2, 3),
           ddp_detector_checkpoint: (0, 1, 2, 3), ddp_module_file: (0, 1, 2, 3)}


def build_pretrained(path, **kwargs):
    model = ConvNeXt(arch=SMALLEST_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    return model.eval()


def assert_loaded(loaded, source, norms_in_file, norm_init=(1.0, 0.0)):
    """Every tensor of ``loaded`` is the source's, but output norms the file lacks, which keep their init
    (weight, bias)."""
    for key, value in loaded.state_dict().items():
        match = re.match(r'norm(\d)\.(weight|bias)', key)
        if match and int(match.group(1)) not in norms_in_file:
            expected = torch.full_like(value, norm_init[0] if match.group(2) == 'weight' else norm_init[1])
        else:
            expected = source.state_dict()[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('use_grn', [False, True], ids=['v1', 'v2'])
@pytest.mark.parametrize('layout', list(LAYOUTS), ids=lambda f: f.__name__)
def test_every_layout_loads_every_tensor(tmp_path, layout, use_grn):
    source = make_source(use_grn).eval()
    path = tmp_path / 'weights.pth'
    torch.save(layout(source), path)
    loaded = build_pretrained(path, use_grn=use_grn)
    assert_loaded(loaded, source, LAYOUTS[layout])
    if LAYOUTS[layout] == (0, 1, 2, 3):
        x = torch.randn(1, 3, 64, 80)
        with torch.no_grad():
            for a, b in zip(source(x), loaded(x)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fcmae_pretraining_file_is_converted(tmp_path):
    source = make_source(use_grn=True).eval()
    path = tmp_path / 'convnextv2_atto_1k_224_fcmae.pt'
    checkpoint = fcmae_layout(source)
    # The sparse layout, as in the real files: kernels, .ln/.linear levels, (1, C) biases.
    assert checkpoint['model']['encoder.stages.0.0.dwconv.kernel'].shape == (49, 8)
    assert checkpoint['model']['encoder.downsample_layers.1.1.kernel'].shape == (4, 8, 16)
    assert checkpoint['model']['encoder.stages.0.0.dwconv.bias'].shape == (1, 8)
    assert checkpoint['model']['encoder.stages.0.0.grn.gamma'].shape == (1, 32)
    assert 'encoder.downsample_layers.1.0.ln.weight' in checkpoint['model']
    torch.save(checkpoint, path)
    assert_loaded(build_pretrained(path, use_grn=True), source, ())


def test_loading_logs_the_file_what_it_left_out_and_what_kept_its_init(tmp_path):
    path = tmp_path / 'convnext_tiny_1k_224.pth'
    torch.save(official_layout(make_source()), path)
    logger = MMLogger.get_current_instance()
    records = []
    handler = type('H', (logging.Handler, ), {'emit': lambda self, r: records.append(r.getMessage())})()
    logger.addHandler(handler)
    try:
        load_pretrained(ConvNeXt(arch=SMALLEST_ARCH), path, logger=logger)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 2
    loaded, summary = records
    assert f'loaded {len(backbone_tensors(make_source()))} tensors' in loaded
    assert 'left out the classifier (4 tensors); norm0, norm1, norm2, norm3 not in the weights: kept at their init' \
        in loaded
    assert str(path) in summary


def test_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"data/pretrained/none\.pth' not found. Download"):
        build_pretrained('data/pretrained/none.pth')


def test_truncated_file_is_named_corrupt(tmp_path):
    good, bad = tmp_path / 'good.pth', tmp_path / 'bad.pth'
    torch.save(official_layout(make_source()), good)
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r'bad\.pth could not be read .* truncated or corrupt'):
        build_pretrained(bad)


def test_text_file_is_named_corrupt(tmp_path):
    path = tmp_path / 'page.pth'
    path.write_text('<html>404 Not Found</html>')
    with pytest.raises(CheckpointError, match=r'page\.pth could not be read as a PyTorch or safetensors checkpoint'):
        build_pretrained(path)


def test_non_convnext_checkpoint_is_refused(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.randn(64, 3, 7, 7), 'fc.weight': torch.randn(10, 64)}}, path)
    with pytest.raises(CheckpointError, match=r'resnet\.pth: the weights hold no tensor of a ConvNeXt backbone.*conv1\.weight'):
        build_pretrained(path)


def test_checkpoint_of_another_size_names_shapes_and_keys(tmp_path):
    bigger = ConvNeXt(arch=dict(depths=[1, 1, 3, 1], dims=[16, 32, 64, 128]))
    path = tmp_path / 'bigger.pth'
    torch.save(official_layout(bigger), path)
    with pytest.raises(CheckpointError) as error:
        build_pretrained(path)
    message = str(error.value)
    assert 'bigger.pth: the weights do not fit this ConvNeXt backbone' in message
    assert ('they are ConvNeXt with depths=[1, 1, 3, 1], dims=[16, 32, 64, 128], the config builds ConvNeXt with '
            'depths=[1, 1, 2, 1], dims=[8, 16, 32, 64]') in message
    assert ("Write arch=dict(depths=[1, 1, 3, 1], dims=[16, 32, 64, 128]) in the config's model.backbone, or give "
            'weights of the backbone it builds') in message
    assert 'downsample_layers.0.0.weight (16, 3, 4, 4) in the weights vs (8, 3, 4, 4) here' in message
    assert 'not in this backbone: stages.2.2.' in message


def test_v1_file_into_v2_model_names_the_missing_grn(tmp_path):
    path = tmp_path / 'v1.pth'
    torch.save(official_layout(make_source(use_grn=False)), path)
    with pytest.raises(CheckpointError, match=r'they are ConvNeXt with depths=\[1, 1, 2, 1\], .*, the config builds '
                                              r'ConvNeXt V2 with depths=\[1, 1, 2, 1\], .*\. Write use_grn=False, '
                                              r'layer_scale_init_value=1e-06 .*'
                                              r'missing from the weights: stages\.0\.0\.grn\.beta'):
        build_pretrained(path, use_grn=True)


class TrainingHook:
    """An arbitrary object, which safe loading must refuse to unpickle."""


def test_file_of_other_objects_is_refused_by_safe_loading(tmp_path):
    path = tmp_path / 'pickled.pth'
    torch.save({'model': {'stem.0.weight': torch.zeros(1)}, 'hook': TrainingHook()}, path)
    with pytest.raises(CheckpointError, match=r'pickled\.pth holds objects that safe loading .* refuses'):
        build_pretrained(path)


def test_unreachable_url_says_to_download_and_pass_a_local_path(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(CheckpointError, match=r'Could not download .*127\.0\.0\.1.* pass its local path'):
        build_pretrained('http://127.0.0.1:9/convnext_tiny_1k_224.pth')


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """A local web server (a thread of this process, 127.0.0.1) serving the folder it returns; torch's download
    cache moved under tmp_path."""
    import functools
    import http.server
    import threading
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    served = tmp_path / 'served'
    served.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    yield served, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def cached_downloads(tmp_path):
    return sorted(p.name for p in (tmp_path / 'torch_home').rglob('*') if p.is_file())


def test_download_from_a_url_loads_and_bad_downloads_are_named_and_not_cached(tmp_path, http_server):
    served, url = http_server
    source = make_source()
    torch.save(official_layout(source), served / 'good.pth')
    assert_loaded(build_pretrained(f'{url}/good.pth'), source, ())
    assert cached_downloads(tmp_path) == ['good.pth']

    (served / 'truncated.pth').write_bytes((served / 'good.pth').read_bytes()[:3000])
    (served / 'page.pth').write_text('<!DOCTYPE html><html><body>Sign in to download</body></html>')
    torch.save({'model': {'stem.0.weight': torch.zeros(1)}, 'hook': TrainingHook()}, served / 'objects.pth')
    for name, message in (('truncated.pth', 'truncated or corrupt'), ('page.pth', 'could not be read as a PyTorch'),
                          ('objects.pth', 'holds objects that safe loading .* refuses')):
        with pytest.raises(CheckpointError, match=rf'download of {re.escape(url)}/{name} is not a usable checkpoint '
                                                  rf'\(removed from the cache.*{message}'):
            build_pretrained(f'{url}/{name}')
    with pytest.raises(CheckpointError, match=rf'Could not download .*{re.escape(url)}/absent\.pth.*404'):
        build_pretrained(f'{url}/absent.pth')
    assert cached_downloads(tmp_path) == ['good.pth']  # a bad download is fetched anew on the next run


def test_pretrained_without_checkpoint_key():
    with pytest.raises(ValueError, match='needs checkpoint=PATH_OR_URL'):
        ConvNeXt(arch=SMALLEST_ARCH, init_cfg=dict(type='Pretrained'))


def saved(tmp_path, layout, source):
    path = tmp_path / f'{layout.__name__}.pth'
    torch.save(layout(source), path)
    return str(path)


@pytest.mark.parametrize('form, prefix', [
    (form, prefix) for form in ('dict', 'list', 'list with other initializers') for prefix in (None, 'backbone.', 'backbone')
] + [('pretrained argument', None)])
def test_every_way_of_naming_the_weights_loads_them(tmp_path, form, prefix):
    source = make_source()
    path = saved(tmp_path, mmpretrain_layout, source)  # mmpretrain's files are what mmdet's configs name
    pretrained = dict(type='Pretrained', checkpoint=path, **({'prefix': prefix} if prefix else {}))
    if form == 'pretrained argument':
        with pytest.warns(DeprecationWarning, match='pretrained= is deprecated'):
            model = ConvNeXt(arch=SMALLEST_ARCH, pretrained=path)
    else:
        init_cfg = {'dict': pretrained, 'list': [pretrained], 'list with other initializers': [
            dict(type='Constant', layer='LayerNorm', val=3.0), pretrained,
            dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02)]}[form]
        model = ConvNeXt(arch=SMALLEST_ARCH, init_cfg=init_cfg)
    model.init_weights()
    # mmengine's order: the other initializers first, then the file, which overwrites what it holds.
    norm_init = (3.0, 0.0) if form == 'list with other initializers' else (1.0, 0.0)
    assert_loaded(model, source, (3, ), norm_init)


def test_detector_built_from_config_loads_a_list_init_cfg(tmp_path):
    """The way a config reaches the backbone: the detector's init_weights() calls the backbone's."""
    import mmdet.registry
    from mmengine.registry import init_default_scope
    source = make_source()
    path = saved(tmp_path, own_detector_checkpoint, source)
    init_default_scope('mmdet')
    detector = mmdet.registry.MODELS.build(dict(
        type='RetinaNet', data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=dict(type='ConvNeXt', arch=SMALLEST_ARCH, out_indices=(1, 2, 3),
                      init_cfg=[dict(type='Pretrained', checkpoint=path, prefix='backbone.')]),
        neck=dict(type='FPN', in_channels=[16, 32, 64], out_channels=8, num_outs=3),
        bbox_head=dict(type='RetinaHead', num_classes=2, in_channels=8, feat_channels=8,
                       anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                                             ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32]),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True), loss_bbox=dict(type='L1Loss'))))
    detector.init_weights()
    for key, value in detector.backbone.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('init_cfg, message', [
    ([dict(type='Pretrained', checkpoint='a.pth'), dict(type='Pretrained', checkpoint='b.pth')],
     'has 2 Pretrained entries; keep one'),
    (dict(type='Pretrained', checkpoint='a.pth', strict=False), r"unsupported keys \['strict'\]"),
    ('a.pth', 'init_cfg must be a dict or a list of dicts'),
])
def test_bad_init_cfg_is_named(init_cfg, message):
    with pytest.raises(ValueError, match=message):
        ConvNeXt(arch=SMALLEST_ARCH, init_cfg=init_cfg)


def test_weights_given_twice_are_refused():
    with pytest.raises(ValueError, match='weights given twice'):
        ConvNeXt(arch=SMALLEST_ARCH, pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth'))


def test_prefix_that_matches_nothing_says_to_delete_it(tmp_path):
    path = saved(tmp_path, official_layout, make_source())
    model = ConvNeXt(arch=SMALLEST_ARCH, init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    with pytest.raises(CheckpointError, match=r"official_layout\.pth: has no tensors under prefix='backbone\.'.*"
                                              r"Delete prefix"):
        model.init_weights()


def test_half_an_output_norm_is_an_error(tmp_path):
    state = own_backbone_file(make_source())
    del state['norm3.bias']
    path = tmp_path / 'half_norm.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r'missing from the weights: norm3\.bias'):
        build_pretrained(path)


def test_numpy_metadata_is_read_without_touching_the_process_safe_globals(tmp_path):
    """A file holding numpy metadata (mmpretrain's) loads through the backbone's reader, which allows those types
    for its own torch.load only: the process's list is the same before and after, a type the host allowed stays."""
    path = tmp_path / 'mmpretrain.pth'
    torch.save(mmpretrain_layout(make_source()), path)
    allowed = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(Exception, match='Unsupported global'):
            torch.load(path)
        assert read_checkpoint(path)['meta']['epoch'] == 300
        assert torch.serialization.get_safe_globals() == []
        torch.serialization.add_safe_globals([np.dtype])  # the host's own
        assert read_checkpoint(path)['meta']['epoch'] == 300
        assert torch.serialization.get_safe_globals() == [np.dtype]
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(allowed)


def test_loading_leaves_the_process_safe_globals_as_they_were(tmp_path):
    pretrained = tmp_path / 'pretrained.pth'
    torch.save(own_detector_checkpoint(make_source()), pretrained)
    before = set(torch.serialization.get_safe_globals())
    build_pretrained(pretrained)
    assert set(torch.serialization.get_safe_globals()) == before


def test_loader_schemes_replace_no_loader_of_the_host():
    """.safetensors and hf-hub: loaders are added only where mmengine has none for those prefixes: a host's own
    loader, registered before the import, stays."""
    import importlib.util
    from mmengine.runner import CheckpointLoader

    from convnext_mm.checkpoint import load_from_safetensors
    schemes = dict(CheckpointLoader._schemes)
    assert schemes['hf-hub:'] is load_from_safetensors

    def host_loader(filename, map_location=None):
        return {}
    try:
        CheckpointLoader._schemes.pop('hf-hub:')
        CheckpointLoader.register_scheme('hf-hub:', host_loader)
        spec = importlib.util.spec_from_file_location('checkpoint_again', osp.join(ROOT, 'convnext_mm', 'checkpoint.py'))
        spec.loader.exec_module(importlib.util.module_from_spec(spec))  # a second import adds nor replaces anything
        assert CheckpointLoader._schemes['hf-hub:'] is host_loader
        assert set(CheckpointLoader._schemes) == set(schemes)
    finally:
        CheckpointLoader._schemes.clear()
        CheckpointLoader._schemes.update(schemes)


def test_checkpoint_of_convnext_mm_0_1_resumes_through_mmengine(tmp_path):
    """A whole-model checkpoint saved under convnext_mm 0.1's names (a run to resume, a load_from) loads every
    backbone tensor through mmengine's own (non-strict) loader, which would otherwise skip them with a warning."""
    from mmengine.runner import load_checkpoint
    source = make_source()
    old = {'backbone.' + k: v for k, v in own_file_before_0_2(source).items()}
    assert 'backbone.stem.0.weight' in old and 'backbone.stages.1.blocks.0.dwconv.weight' in old
    path = tmp_path / 'epoch_12.pth'
    torch.save({'meta': {'epoch': 12}, 'state_dict': old}, path)  # plain data, as torch's safe loader reads
    model = torch.nn.Module()
    model.backbone = ConvNeXt(arch=SMALLEST_ARCH)
    load_checkpoint(model, str(path), strict=False)
    assert_loaded(model.backbone, source, (0, 1, 2, 3))
    model.backbone.load_state_dict(own_file_before_0_2(source))  # strict, torch's own


def test_trained_model_of_convnext_mm_0_1_passes_the_tools_check(tmp_path):
    """tools/infer.py and export_onnx.py check a trained checkpoint key by key before loading: old names fit too."""
    from trained_model import load_trained  # tools/trained_model.py, on sys.path through project
    source = make_source()
    path = tmp_path / 'epoch_36.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in own_file_before_0_2(source).items()}}, path)
    model = torch.nn.Module()
    model.backbone = ConvNeXt(arch=SMALLEST_ARCH)
    load_trained(model, str(path), 'config.py')
    assert_loaded(model.backbone, source, (0, 1, 2, 3))
