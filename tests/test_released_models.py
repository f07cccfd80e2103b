"""The trained models users already own, through the host libraries' own doors: a detector or segmentor whose
backbone is in the model zoos' layout (mmpretrain's block names), the official release's, timm's or convnext_mm
0.1's, and the Hugging Face hub's ImageNet files (timm's safetensors, transformers' ConvNeXt and ConvNeXt V2), loaded
by mmengine's ``load_checkpoint``, torch's ``load_state_dict``, ``init_detector`` / ``init_model``, the Inferencers
and mmdet's and mmseg's own ``tools/test.py``: every backbone tensor loaded, the predictions and metric the
original's; a file of another size stops with an error that names both sizes and the fix."""
import logging
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from convnext_mm import ConvNeXt
from convnext_mm.checkpoint import CheckpointError
from convnext_mm.width_check import check_consumer_widths

from checkpoint_layouts import timm_layout, whole_model_in_layout
from project import CASCADE_T, ROOT, UPERNET_T, host_tool, load_tool
from tiny_data import write_ade, write_coco
from tiny_models import ATTO_ARCH, randomize_whole_model, shrink_cascade, shrink_upernet

DETECTION_CLASSES = ('square', 'bar', 'blob')

DETECTION_DATA = dict(
    test_pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
    ])


def tiny_cascade_config(path, data_root):
    """The paper's Cascade Mask R-CNN T config shrunk (atto backbone, 32-channel heads) on ``data_root``, written
    to ``path`` as mmengine dumps a run's config (what the host tools read)."""
    cfg = shrink_cascade(Config.fromfile(CASCADE_T), num_classes=len(DETECTION_CLASSES))
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # every box, so predictions are compared in full
    loader = cfg.val_dataloader
    loader.update(batch_size=1, num_workers=0, persistent_workers=False)
    loader.dataset.update(data_root=data_root, ann_file='annotations/instances_val.json',
                          data_prefix=dict(img='val/'), metainfo=dict(classes=DETECTION_CLASSES),
                          pipeline=DETECTION_DATA['test_pipeline'])
    cfg.test_dataloader = loader
    cfg.val_evaluator.ann_file = osp.join(data_root, 'annotations', 'instances_val.json')
    cfg.test_evaluator = cfg.val_evaluator
    cfg.optim_wrapper.type = 'OptimWrapper'  # the CPU's: no AmpOptimWrapper without CUDA
    cfg.dump(str(path))
    return str(path)


def tiny_upernet_config(path, data_root):
    """The paper's UperNet T config shrunk (atto backbone, 32-channel heads) on ``data_root``'s validation
    images, ADE20K's 150 classes, written to ``path``."""
    cfg = shrink_upernet(Config.fromfile(UPERNET_T), num_classes=150)
    loader = cfg.val_dataloader
    loader.update(batch_size=1, num_workers=0, persistent_workers=False)
    loader.dataset.update(data_root=data_root, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True), dict(type='PackSegInputs')])
    cfg.test_dataloader = loader
    cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.dump(str(path))
    return str(path)


def model_zoo_layout(state_dict):
    """A whole model's state dict with its backbone's blocks under mmpretrain's names, as the model zoos publish
    (the model zoos' ConvNeXt detectors and segmentors were trained with mmpretrain's ConvNeXt)."""
    return whole_model_in_layout(state_dict, 'mmpretrain')


def save_trained(path, model, classes, layout=lambda state: state):
    """A checkpoint as the model zoos publish one and mmengine's Runner saves one under SafeCheckpointHook (meta
    with the classes, state_dict; plain data, which torch's safe loader reads in the hosts' own loaders), in
    ``layout``."""
    state = layout({k: v.clone() for k, v in model.state_dict().items()})
    torch.save(dict(meta=dict(dataset_meta=dict(classes=classes), epoch=36), state_dict=state), path)
    return str(path)


def backbone_state(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith('backbone.')}


def assert_same_backbone(model, source):
    expected = backbone_state(source)
    got = backbone_state(model)
    assert sorted(got) == sorted(expected)
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, f'{len(different)} of {len(expected)} backbone tensors not loaded: {different[:3]}'


@pytest.fixture(scope='module')
def detection(tmp_path_factory):
    """(config path, original model, its checkpoint, the same in the model zoos' layout) of a tiny Cascade Mask
    R-CNN with every weight non-trivial."""
    root = tmp_path_factory.mktemp('released_det')
    data_root = write_coco(str(root / 'coco'), splits=('val', ), classes=DETECTION_CLASSES, num_images=3)
    config = tiny_cascade_config(root / 'tiny_cascade.py', data_root)
    from mmdet.apis import init_detector
    model = randomize_whole_model(init_detector(str(config), device='cpu'))
    original = save_trained(root / 'original.pth', model, DETECTION_CLASSES)
    zoo = save_trained(root / 'model_zoo_layout.pth', model, DETECTION_CLASSES, model_zoo_layout)
    return config, model, original, zoo


@pytest.fixture(scope='module')
def segmentation(tmp_path_factory):
    root = tmp_path_factory.mktemp('released_seg')
    config = tiny_upernet_config(root / 'tiny_upernet.py', write_ade(str(root / 'ade'), splits=('validation', )))
    from mmseg.apis import init_model
    model = randomize_whole_model(init_model(str(config), device='cpu'))
    from mmseg.utils import get_classes
    classes = tuple(get_classes('ade20k'))
    original = save_trained(root / 'original.pth', model, classes)
    zoo = save_trained(root / 'model_zoo_layout.pth', model, classes, model_zoo_layout)
    return str(config), model, original, zoo


def test_the_model_zoo_layout_is_the_published_files_names(detection):
    _, _, _, zoo = detection
    keys = torch.load(zoo, weights_only=True)['state_dict']
    assert 'backbone.stages.2.5.depthwise_conv.weight' in keys
    assert 'backbone.stages.0.1.pointwise_conv1.weight' in keys and 'backbone.stages.3.1.pointwise_conv2.bias' in keys
    assert 'backbone.downsample_layers.0.0.weight' in keys and 'backbone.stages.1.0.gamma' in keys
    assert not [k for k in keys if re.search(r'\.(dwconv|pwconv[12])\.', k)]


def test_mmengine_load_checkpoint_fills_the_backbone_from_the_model_zoo_layout(detection):
    config, source, _, zoo = detection
    from mmdet.apis import init_detector
    model = init_detector(config, device='cpu')  # random weights
    load_checkpoint(model, zoo, map_location='cpu')
    assert_same_backbone(model, source)
    assert torch.equal(model.roi_head.bbox_head[2].fc_cls.weight, source.roi_head.bbox_head[2].fc_cls.weight)


def convnext_mm_0_1_layout(state_dict):
    """convnext_mm 0.1 saved its backbone under timm's module names."""
    return whole_model_in_layout(state_dict, 'convnext_mm 0.1')


@pytest.mark.parametrize('layout', [model_zoo_layout, convnext_mm_0_1_layout, lambda state: state],
                         ids=['model_zoo', 'convnext_mm_0.1', 'official'])
@pytest.mark.parametrize('loader', ['init_detector', 'torch_strict', 'det_inferencer'])
def test_every_host_loader_fills_the_backbone(detection, tmp_path, layout, loader):
    config, source, _, _ = detection
    path = save_trained(tmp_path / 'trained.pth', source, DETECTION_CLASSES, layout)
    if loader == 'init_detector':
        from mmdet.apis import init_detector
        model = init_detector(config, path, device='cpu')
        assert model.dataset_meta['classes'] == DETECTION_CLASSES
    elif loader == 'torch_strict':
        from mmdet.apis import init_detector
        model = init_detector(config, device='cpu')
        model.load_state_dict(torch.load(path, weights_only=True)['state_dict'], strict=True)
    else:
        from mmdet.apis import DetInferencer
        model = DetInferencer(model=config, weights=path, device='cpu', show_progress=False).model
    assert_same_backbone(model, source)


def predictions(model, image):
    from mmdet.apis import inference_detector
    result = inference_detector(model, image).pred_instances
    return result.bboxes, result.scores, result.labels


def test_init_detector_on_the_model_zoo_file_predicts_as_the_original(detection):
    config, _, original, zoo = detection
    from mmdet.apis import init_detector
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    expected = predictions(init_detector(config, original, device='cpu'), image)
    got = predictions(init_detector(config, zoo, device='cpu'), image)
    assert expected[0].numel() > 0
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def run_host_test(library, config, checkpoint, work_dir, *extra):
    """The host library's own tools/test.py in a new process; returns its output."""
    result = subprocess.run([sys.executable, host_tool(library, 'test'), config, checkpoint, '--work-dir',
                             str(work_dir), *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_mmdets_own_test_tool_evaluates_the_model_zoo_file_as_the_original(detection, tmp_path):
    config, _, original, zoo = detection
    outputs = {}
    for name, path in (('original', original), ('model_zoo', zoo)):
        log = run_host_test('mmdet', config, path, tmp_path / name, '--out', str(tmp_path / f'{name}.pkl'))
        outputs[name] = (re.search(r'coco/bbox_mAP_50: ([\d.]+)', log).group(1),
                         pickle.load(open(tmp_path / f'{name}.pkl', 'rb')))
    assert outputs['model_zoo'][0] == outputs['original'][0]
    for a, b in zip(outputs['original'][1], outputs['model_zoo'][1]):
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(torch.as_tensor(a['pred_instances'][key]), torch.as_tensor(b['pred_instances'][key]))
    # The check can fail: a backbone left at random predicts other boxes.
    heads_only = {k: v for k, v in torch.load(original, weights_only=True)['state_dict'].items()
                  if not k.startswith('backbone.')}
    torch.save(dict(state_dict=heads_only), tmp_path / 'heads_only.pth')
    run_host_test('mmdet', config, str(tmp_path / 'heads_only.pth'), tmp_path / 'heads', '--out',
                  str(tmp_path / 'heads.pkl'))
    random_backbone = pickle.load(open(tmp_path / 'heads.pkl', 'rb'))
    assert not torch.equal(torch.as_tensor(random_backbone[0]['pred_instances']['scores']),
                           torch.as_tensor(outputs['original'][1][0]['pred_instances']['scores']))


def test_mmsegs_own_test_tool_evaluates_the_model_zoo_file_as_the_original(segmentation, tmp_path):
    config, _, original, zoo = segmentation
    metrics = {}
    for name, path in (('original', original), ('model_zoo', zoo)):
        log = run_host_test('mmseg', config, path, tmp_path / name)
        metrics[name] = re.search(r'mIoU: ([\d.]+)', log).group(1)
    assert metrics['model_zoo'] == metrics['original']


def test_init_model_and_mmseg_inferencer_fill_the_backbone(segmentation):
    config, source, _, zoo = segmentation
    from mmseg.apis import MMSegInferencer, inference_model, init_model
    model = init_model(config, zoo, device='cpu')
    assert_same_backbone(model, source)
    image = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    expected = inference_model(source.eval(), image).seg_logits.data
    torch.testing.assert_close(inference_model(model, image).seg_logits.data, expected, rtol=0, atol=0)
    inferencer = MMSegInferencer(model=config, weights=zoo, device='cpu')
    assert_same_backbone(inferencer.model, source)


def test_load_from_into_a_config_with_other_classes_keeps_the_backbone(detection, tmp_path):
    """Fine-tuning a published detector on one's own classes: the backbone loads exactly, the class-sized layers
    of the heads are left to mmengine (skipped with its warning)."""
    config, source, _, zoo = detection
    cfg = Config.fromfile(config)
    for head in cfg.model.roi_head.bbox_head:
        head.num_classes = 7
    cfg.model.roi_head.mask_head.num_classes = 7
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    load_checkpoint(model, zoo, map_location='cpu')
    assert_same_backbone(model, source)
    assert model.roi_head.bbox_head[0].fc_cls.weight.shape[0] == 8


def test_a_small_detector_file_into_a_tiny_config_stops_and_names_both(tmp_path):
    small = {'backbone.' + k: v for k, v in ConvNeXt(arch='small').state_dict().items()}
    path = tmp_path / 'cascade_small.pth'
    torch.save(dict(state_dict=model_zoo_layout(small)), path)
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(CASCADE_T)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    before = {k: v.clone() for k, v in backbone_state(model).items()}
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model, str(path), map_location='cpu')
    message = str(error.value)
    assert ("they are ConvNeXt-small, the config builds ConvNeXt-tiny. Write arch='small' in the config's "
            'model.backbone') in message
    assert all(torch.equal(v, before[k]) for k, v in backbone_state(model).items())  # nothing half-loaded


def test_our_test_tool_stops_on_a_file_of_another_backbone_with_the_fix(detection, tmp_path):
    """tools/test.py names both sizes and what to write, instead of a traceback from inside mmengine."""
    config, source, _, _ = detection
    state = {k: v for k, v in source.state_dict().items() if not k.startswith('backbone.')}
    state.update({'backbone.' + k: v for k, v in ConvNeXt(arch='femto').state_dict().items()})
    torch.save(dict(state_dict=state), tmp_path / 'femto_backbone.pth')
    with pytest.raises(SystemExit) as exit_info:
        load_tool('test').main([config, str(tmp_path / 'femto_backbone.pth'), '--work-dir', str(tmp_path / 'work')])
    message = str(exit_info.value.code)
    assert message.startswith('error: ') and 'they are ConvNeXt-femto, the config builds ConvNeXt-atto' in message
    assert "Write arch='femto' in the config's model.backbone" in message


def test_a_heads_only_file_leaves_the_backbone_and_says_so(detection, tmp_path, caplog):
    config, source, original, _ = detection
    from mmdet.apis import init_detector
    model = init_detector(config, device='cpu')
    before = {k: v.clone() for k, v in backbone_state(model).items()}
    heads = {k: v for k, v in torch.load(original, weights_only=True)['state_dict'].items()
             if not k.startswith('backbone.')}
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().addHandler(handler)
    try:
        model.load_state_dict(heads, strict=False)
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    assert all(torch.equal(v, before[k]) for k, v in backbone_state(model).items())
    assert any("hold no tensor under 'backbone.'" in m and 'keeps the weights it has' in m for m in messages)


def test_a_neck_written_for_another_width_names_the_arch_and_the_line():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(CASCADE_T)
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.in_channels = [128, 256, 512, 1024]  # ConvNeXt-B's, with arch tiny
    model = MODELS.build(cfg.model)
    with pytest.raises(ValueError) as error:
        check_consumer_widths(model)
    assert str(error.value) == (
        'FPN (model.neck) expects in_channels=[128, 256, 512, 1024], but the backbone, ConvNeXt-tiny, outputs '
        '[96, 192, 384, 768] channels at out_indices (0, 1, 2, 3). Write neck=dict(in_channels=[96, 192, 384, 768]) '
        "in the config's model, or pick the arch the neck was written for.")


def test_a_decode_head_written_for_another_width_names_the_arch():
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = Config.fromfile(UPERNET_T)
    cfg.model.backbone.update(arch='atto', init_cfg=None)
    cfg.model.decode_head.update(in_channels=[96, 192, 384, 768], channels=32)
    cfg.model.auxiliary_head.update(in_channels=160, channels=16)
    model = MODELS.build(cfg.model)
    with pytest.raises(ValueError) as error:
        check_consumer_widths(model)
    assert str(error.value).startswith(
        'UPerHead (model.decode_head) expects in_channels=[96, 192, 384, 768], but the backbone, ConvNeXt-atto, '
        'outputs [40, 80, 160, 320] channels at out_indices (0, 1, 2, 3). Write '
        'decode_head=dict(in_channels=[40, 80, 160, 320])')
    cfg.model.decode_head.in_channels = ATTO_ARCH['dims']
    cfg.model.auxiliary_head.in_channels = 384  # ConvNeXt-T's stage 2, read at in_index 2
    with pytest.raises(ValueError, match=r'FCNHead \(model.auxiliary_head\) expects in_channels=384, .* Write '
                                         r'auxiliary_head=dict\(in_channels=160\)'):
        check_consumer_widths(MODELS.build(cfg.model))


def test_matching_consumers_pass_the_check_and_no_global_hook_runs():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(CASCADE_T)
    cfg.model.backbone.update(arch='atto', init_cfg=None)
    cfg.model.neck.in_channels = ATTO_ARCH['dims']
    model = MODELS.build(cfg.model).eval()
    check_consumer_widths(model)
    with torch.no_grad():
        model.extract_feat(torch.randn(1, 3, 64, 64))
    assert not torch.nn.modules.module._global_forward_pre_hooks


# Hugging Face hub files, written by the libraries that write them.

def transformers_backbone(version):
    """transformers' ConvNeXt (or V2) backbone at atto's size with every tensor non-trivial, an independent
    implementation of the paper's model to compare outputs with."""
    transformers = pytest.importorskip('transformers')
    if version == 'v1':
        config = transformers.ConvNextConfig(depths=ATTO_ARCH['depths'], hidden_sizes=ATTO_ARCH['dims'],
                                             layer_scale_init_value=1e-6,
                                             out_features=['stage1', 'stage2', 'stage3', 'stage4'])
        model = transformers.ConvNextBackbone(config)
    else:
        config = transformers.ConvNextV2Config(depths=ATTO_ARCH['depths'], hidden_sizes=ATTO_ARCH['dims'],
                                               out_features=['stage1', 'stage2', 'stage3', 'stage4'])
        model = transformers.ConvNextV2Backbone(config)
    return randomize_whole_model(model).eval()


@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_transformers_files_load_and_give_transformers_outputs(tmp_path, version):
    reference = transformers_backbone(version)
    reference.save_pretrained(tmp_path)  # model.safetensors, transformers' own names and shapes
    from safetensors.torch import load_file
    keys = load_file(tmp_path / 'model.safetensors')
    assert 'encoder.stages.2.layers.5.pwconv1.weight' in keys and 'embeddings.patch_embeddings.weight' in keys
    if version == 'v2':
        assert keys['encoder.stages.0.layers.0.grn.weight'].shape == (1, 1, 1, 160)
    else:
        assert 'encoder.stages.1.layers.0.layer_scale_parameter' in keys
    model = ConvNeXt(arch=ATTO_ARCH, use_grn=version == 'v2',
                     init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'model.safetensors')))
    model.init_weights()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = reference(pixel_values=x).feature_maps
        got = model.eval()(x)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_transformers_classifier_file_loads_its_backbone(tmp_path):
    transformers = pytest.importorskip('transformers')
    config = transformers.ConvNextConfig(depths=ATTO_ARCH['depths'], hidden_sizes=ATTO_ARCH['dims'], num_labels=10)
    classifier = randomize_whole_model(transformers.ConvNextForImageClassification(config))
    classifier.save_pretrained(tmp_path)
    model = ConvNeXt(arch=ATTO_ARCH, out_indices=(3, ),
                     init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'model.safetensors')))
    model.init_weights()
    state = classifier.state_dict()
    torch.testing.assert_close(model.stages[2][5].pwconv1.weight, state['convnext.encoder.stages.2.layers.5.pwconv1.weight'])
    torch.testing.assert_close(model.stages[3][1].gamma,
                               state['convnext.encoder.stages.3.layers.1.layer_scale_parameter'])


def timm_safetensors(path, source):
    """A timm ``model.safetensors`` (``stem``, ``stages.S.downsample``, ``stages.S.blocks.B.{conv_dw,mlp.fc1,...}``,
    ``head``), written with safetensors' own ``save_file``."""
    from safetensors.torch import save_file
    save_file({key: value.contiguous() for key, value in timm_layout(source).items()}, str(path))
    return str(path)


def test_timm_safetensors_loads_through_init_cfg_and_mmengine(tmp_path):
    source = randomize_whole_model(ConvNeXt(arch=ATTO_ARCH)).eval()
    path = timm_safetensors(tmp_path / 'model.safetensors', source)
    model = ConvNeXt(arch=ATTO_ARCH, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    loaded = {k: v for k, v in model.state_dict().items() if not k.startswith('norm')}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.items())
    # mmengine's load_checkpoint (what load_from calls) reads the .safetensors file too.
    other = ConvNeXt(arch=ATTO_ARCH)
    load_checkpoint(other, path, map_location='cpu')
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in other.state_dict().items()
               if not k.startswith('norm'))


def write_hub_cache(cache, repo_id, file):
    """huggingface_hub's cache layout for one file of ``repo_id`` (refs/main -> snapshots/COMMIT/)."""
    folder = osp.join(cache, 'models--' + repo_id.replace('/', '--'))
    commit = '0123456789abcdef0123456789abcdef01234567'
    os.makedirs(osp.join(folder, 'refs'))
    os.makedirs(osp.join(folder, 'snapshots', commit))
    with open(osp.join(folder, 'refs', 'main'), 'w') as f:
        f.write(commit)
    os.replace(file, osp.join(folder, 'snapshots', commit, 'model.safetensors'))


def test_hf_hub_names_resolve_through_the_cache_and_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip('huggingface_hub')
    cache = str(tmp_path / 'hub')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', cache)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(CheckpointError) as error:
        ConvNeXt(arch=ATTO_ARCH, init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/convnext_atto.d2_in1k')
                 ).init_weights()
    message = str(error.value)
    assert 'hf download timm/convnext_atto.d2_in1k model.safetensors' in message
    assert osp.join(cache, 'models--timm--convnext_atto.d2_in1k') in message
    source = randomize_whole_model(ConvNeXt(arch=ATTO_ARCH)).eval()
    write_hub_cache(cache, 'timm/convnext_atto.d2_in1k', timm_safetensors(tmp_path / 'model.safetensors', source))
    model = ConvNeXt(arch=ATTO_ARCH, init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/convnext_atto.d2_in1k'))
    model.init_weights()
    assert torch.equal(model.stages[2][3].pwconv2.weight, source.stages[2][3].pwconv2.weight)
    other = ConvNeXt(arch=ATTO_ARCH)
    load_checkpoint(other, 'hf-hub:timm/convnext_atto.d2_in1k', map_location='cpu')  # mmengine's load_from
    assert torch.equal(other.downsample_layers[0][0].weight, source.downsample_layers[0][0].weight)


def test_a_corrupt_safetensors_file_is_named(tmp_path):
    source = randomize_whole_model(ConvNeXt(arch=ATTO_ARCH))
    path = timm_safetensors(tmp_path / 'model.safetensors', source)
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='could not be read .* truncated or corrupt'):
        ConvNeXt(arch=ATTO_ARCH, init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()
