"""Loading pretrained weights: every public layout gives the same outputs; bad files give named errors."""
import logging
import re

import numpy as np
import pytest
import torch

from convnext_mm import ConvNeXt
from convnext_mm.checkpoint import CheckpointError, load_pretrained

from test_backbone import TINY_ARCH, randomize

V2_ARCH = dict(depths=[1, 1, 2, 1], dims=[8, 16, 32, 64])


def make_source(use_grn=False):
    """A trained-looking backbone whose output norms are at their init, as a classification file leaves them."""
    model = randomize(ConvNeXt(arch=TINY_ARCH, use_grn=use_grn))
    fresh = ConvNeXt(arch=TINY_ARCH, use_grn=use_grn)
    for i in range(4):
        getattr(model, f'norm{i}').load_state_dict(getattr(fresh, f'norm{i}').state_dict())
    return model


def backbone_tensors(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not re.match(r'norm\d\.', k)}


def classifier(dim=64, classes=10):
    return {'norm.weight': torch.ones(dim), 'norm.bias': torch.zeros(dim),
            'head.weight': torch.randn(classes, dim), 'head.bias': torch.zeros(classes)}


def official_layout(model):
    """The facebookresearch/ConvNeXt release: {'model': ...}, downsample_layers.I.J, stages.S.B.*."""
    out = {}
    for key, value in backbone_tensors(model).items():
        key = re.sub(r'^stem\.', 'downsample_layers.0.', key)
        key = re.sub(r'^stages\.(\d)\.downsample\.', r'downsample_layers.\1.', key)
        key = re.sub(r'^stages\.(\d)\.blocks\.', r'stages.\1.', key)
        if key.endswith(('grn.gamma', 'grn.beta')):
            value = value.reshape(1, 1, 1, -1)  # ConvNeXt V2's shape
        out[key] = value
    return {'model': {**out, **classifier()}}


def timm_layout(model):
    out = {}
    for key, value in backbone_tensors(model).items():
        key = key.replace('.dwconv.', '.conv_dw.').replace('.pwconv1.', '.mlp.fc1.')
        key = key.replace('.pwconv2.', '.mlp.fc2.')
        key = key.replace('.grn.gamma', '.mlp.grn.weight').replace('.grn.beta', '.mlp.grn.bias')
        out[key] = value
    return {**out, 'head.norm.weight': torch.ones(64), 'head.norm.bias': torch.zeros(64),
            'head.fc.weight': torch.randn(10, 64), 'head.fc.bias': torch.zeros(10)}


def mmpretrain_layout(model):
    out = {}
    for key, value in backbone_tensors(model).items():
        key = re.sub(r'^stem\.', 'downsample_layers.0.', key)
        key = re.sub(r'^stages\.(\d)\.downsample\.', r'downsample_layers.\1.', key)
        key = re.sub(r'^stages\.(\d)\.blocks\.', r'stages.\1.', key)
        key = key.replace('.dwconv.', '.depthwise_conv.').replace('.pwconv1.', '.pointwise_conv1.')
        key = key.replace('.pwconv2.', '.pointwise_conv2.')
        out['backbone.' + key] = value
    # mmpretrain's classifier keeps its final norm as backbone.norm3 (trained, so it is loaded).
    out['backbone.norm3.weight'] = model.norm3.weight.detach().clone()
    out['backbone.norm3.bias'] = model.norm3.bias.detach().clone()
    out['head.fc.weight'], out['head.fc.bias'] = torch.randn(10, 64), torch.zeros(10)
    return {'meta': {'epoch': np.int64(300), 'mean': np.array([123.675, 116.28, 103.53])}, 'state_dict': out}


def own_backbone_file(model):
    return model.state_dict()


def own_detector_checkpoint(model):
    state = {'backbone.' + k: v for k, v in model.state_dict().items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 8, 1, 1)
    return {'meta': {'iter': np.int64(10), 'seed': np.int32(0)}, 'state_dict': state}


LAYOUTS = [official_layout, timm_layout, mmpretrain_layout, own_backbone_file, own_detector_checkpoint]


def build_pretrained(path, **kwargs):
    model = ConvNeXt(arch=TINY_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize('use_grn', [False, True], ids=['v1', 'v2'])
@pytest.mark.parametrize('layout', LAYOUTS, ids=lambda f: f.__name__)
def test_every_layout_reproduces_the_outputs(tmp_path, layout, use_grn):
    source = make_source(use_grn).eval()
    path = tmp_path / 'weights.pth'
    torch.save(layout(source), path)
    loaded = build_pretrained(path, use_grn=use_grn)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        for a, b in zip(source(x), loaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loading_logs_one_summary(tmp_path):
    path = tmp_path / 'convnext_tiny_1k_224.pth'
    torch.save(official_layout(make_source()), path)
    logger = logging.getLogger('convnext_mm.test')
    records = []
    logger.addHandler(type('H', (logging.Handler, ), {'emit': lambda self, r: records.append(r.getMessage())})())
    logger.setLevel(logging.INFO)
    load_pretrained(ConvNeXt(arch=TINY_ARCH), path, logger=logger)
    assert len(records) == 1
    summary = records[0]
    assert str(path) in summary
    assert 'expectedly absent: norm0, norm1, norm2, norm3' in summary
    assert 'ignored 4 tensors' in summary and 'head.weight' in summary


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
    with pytest.raises(CheckpointError, match=r'page\.pth could not be read as a PyTorch checkpoint'):
        build_pretrained(path)


def test_non_convnext_checkpoint_is_refused(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.randn(64, 3, 7, 7), 'fc.weight': torch.randn(10, 64)}}, path)
    with pytest.raises(CheckpointError, match=r'resnet\.pth is not a ConvNeXt checkpoint.*conv1\.weight'):
        build_pretrained(path)


def test_checkpoint_of_another_size_names_shapes_and_keys(tmp_path):
    bigger = ConvNeXt(arch=dict(depths=[1, 1, 3, 1], dims=[16, 32, 64, 128]))
    path = tmp_path / 'bigger.pth'
    torch.save(official_layout(bigger), path)
    with pytest.raises(CheckpointError) as error:
        build_pretrained(path)
    message = str(error.value)
    assert 'bigger.pth does not fit this ConvNeXt (depths=[1, 1, 2, 1], dims=[8, 16, 32, 64])' in message
    assert 'the file holds ConvNeXt depths=[1, 1, 3, 1], dims=[16, 32, 64, 128]' in message
    assert 'stages.0.blocks.0.dwconv.weight (16, 1, 7, 7) in file vs (8, 1, 7, 7) in model' in message
    assert 'not in the model: stages.2.blocks.2.' in message


def test_v1_file_into_v2_model_names_the_missing_grn(tmp_path):
    path = tmp_path / 'v1.pth'
    torch.save(official_layout(make_source(use_grn=False)), path)
    with pytest.raises(CheckpointError, match=r'missing from the file: stages\.0\.blocks\.0\.grn\.beta'):
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


def test_pretrained_without_checkpoint_key():
    model = ConvNeXt(arch=TINY_ARCH, init_cfg=dict(type='Pretrained'))
    with pytest.raises(ValueError, match='needs checkpoint=PATH_OR_URL'):
        model.init_weights()


def test_loading_leaves_numpy_metadata_loadable_for_other_loaders(tmp_path):
    # mmengine's resume calls torch.load(weights_only default) after the backbone has loaded its weights.
    pretrained, resumable = tmp_path / 'pretrained.pth', tmp_path / 'iter_10.pth'
    torch.save(own_backbone_file(make_source()), pretrained)
    torch.save(own_detector_checkpoint(make_source()), resumable)
    build_pretrained(pretrained)
    assert torch.load(resumable)['meta']['iter'] == 10
