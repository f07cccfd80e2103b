"""Mixed-precision inference (convnext_mm/mixed_precision.py; tools/test.py and tools/benchmark.py --amp, a config's
test_cfg.fp16, tools/infer.py --amp): under mmengine's autocast the layers run in bfloat16 on the CPU and hand their
outputs on in float32, so mmcv's NMS and RoIAlign and all post-processing run in float32; results close to
float32's; the model's methods are left alone (copies compute with their own weights, nothing stacks); clear
errors."""
import copy
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner.amp import autocast

from convnext_mm.mixed_precision import UnsupportedModelError, float32_outputs, layer_modules, to_float32_hook_count
from metrics_recomputed import coco_metrics
from project import CASCADE_T, ROOT, UPERNET_T, load_tool, run_script, scalars
from tiny_data import write_ade, write_coco
from tiny_models import (TINY_CASCADE_CONFIG, TINY_UPERNET_CONFIG, build_model, randomize_whole_model, shrink_cascade,
                         shrink_upernet)

IMAGE = (96, 128)  # height, width


def tiny_detector():
    cfg = shrink_cascade(Config.fromfile(CASCADE_T), num_classes=3)
    cfg.default_scope = 'mmdet'
    torch.manual_seed(0)
    return build_model(cfg)


def tiny_segmentor():
    cfg = shrink_upernet(Config.fromfile(UPERNET_T), num_classes=4)
    cfg.default_scope = 'mmseg'
    torch.manual_seed(0)
    return build_model(cfg)


def batch(scope, proposals=None):
    """One seeded image with the metadata of a test pipeline (and fixed RPN proposals, if given)."""
    image = torch.randint(0, 256, (3, *IMAGE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    metainfo = dict(img_shape=IMAGE, ori_shape=IMAGE, scale_factor=(1.0, 1.0))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        sample = DetDataSample(metainfo=metainfo)
        if proposals is not None:
            sample.proposals = InstanceData(bboxes=proposals, scores=torch.ones(len(proposals)))
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=metainfo)
    return dict(inputs=[image], data_samples=[sample])


def record_outputs(module, store, key):
    """Keep ``module``'s forward outputs under ``store[key]`` (a list per call)."""
    module.register_forward_hook(lambda _, __, output: store.setdefault(key, []).append(output))


def relative_deviation(actual, expected):
    return ((actual.float() - expected).abs().max() / expected.abs().max()).item()


def test_detector_layers_run_in_bf16_and_mmcv_ops_in_fp32_also_inside_mmengine_autocast(monkeypatch):
    """mmengine's TestLoop with fp16=True runs test_step under its autocast; with float32_outputs the RPN conv,
    box-head FC and mask-head conv compute in bfloat16, while mmcv's NMS and RoIAlign get float32 and the
    predictions are float32 (decoded boxes, not rounded to bfloat16's 8-bit mantissa)."""
    model = float32_outputs(tiny_detector())
    seen = {}
    record_outputs(model.rpn_head.rpn_conv, seen, 'rpn conv')
    record_outputs(model.roi_head.bbox_head[0].shared_fcs[0], seen, 'box head fc')
    record_outputs(model.roi_head.mask_head[2].convs[0].conv, seen, 'mask head conv')
    model.roi_head.bbox_roi_extractor[0].roi_layers[0].register_forward_pre_hook(
        lambda _, inputs: seen.setdefault('RoIAlign', []).append(inputs[0]))
    nms_module = sys.modules['mmcv.ops.nms']  # batched_nms looks nms up by name there (mmcv.ops.nms is the function)
    nms = nms_module.nms

    def recording_nms(boxes, scores, *args, **kwargs):
        seen.setdefault('NMS', []).append(boxes)
        return nms(boxes, scores, *args, **kwargs)

    monkeypatch.setattr(nms_module, 'nms', recording_nms)
    with torch.no_grad(), autocast(device_type='cpu'):  # as mmengine's TestLoop(fp16=True) on the CPU
        (result, ) = model.test_step(batch('mmdet'))
    dtypes = {key: {output.dtype for output in outputs} for key, outputs in seen.items()}
    assert dtypes == {'rpn conv': {torch.bfloat16}, 'box head fc': {torch.bfloat16},
                      'mask head conv': {torch.bfloat16}, 'RoIAlign': {torch.float32}, 'NMS': {torch.float32}}
    boxes = result.pred_instances.bboxes
    assert len(boxes) > 0 and boxes.dtype == result.pred_instances.scores.dtype == torch.float32
    assert not torch.equal(boxes, boxes.bfloat16().float())  # decoded in float32: not on bfloat16's grid


def test_detector_without_float32_outputs_fails_inside_mmengine_autocast():
    """Why float32_outputs exists: mmengine's TestLoop(fp16=True) alone sends bfloat16 boxes to mmcv's CPU NMS."""
    with torch.no_grad(), autocast(device_type='cpu'), pytest.raises(RuntimeError, match='BFloat16'):
        tiny_detector().test_step(batch('mmdet'))


def test_detector_heads_in_bf16_are_close_to_fp32():
    """On the same RoIs (fixed proposals, so that the RPN's choice does not differ), the first cascade stage's class
    scores and box deltas under autocast are within bfloat16's rounding of float32's (the later stages see boxes
    refined differently, so their inputs differ too), and handed on in float32."""
    proposals = torch.tensor([[4.0, 8.0, 60.0, 70.0], [30.0, 20.0, 120.0, 90.0], [0.0, 0.0, 127.0, 95.0],
                              [50.0, 40.0, 90.0, 80.0]])
    model = float32_outputs(tiny_detector())
    outputs = {}
    model.roi_head.bbox_head[0].register_forward_hook(
        lambda _, __, output: outputs.setdefault('bf16' if torch.is_autocast_enabled('cpu') else 'fp32', output))
    with torch.no_grad():
        model.test_step(batch('mmdet', proposals))
        with autocast(device_type='cpu'):
            model.test_step(batch('mmdet', proposals))
    (scores, deltas), (scores32, deltas32) = outputs['bf16'], outputs['fp32']
    assert scores.dtype == deltas.dtype == torch.float32  # handed on in float32
    # observed: 0.7% of the largest value for both; bfloat16 keeps 8 significant bits (0.4% per rounding)
    assert relative_deviation(scores, scores32) < 2e-2 and relative_deviation(deltas, deltas32) < 2e-2
    assert not torch.equal(scores, scores32)  # it did run in bfloat16


def test_segmentor_in_bf16_is_close_to_fp32_and_resizes_in_fp32():
    """The classifier computes in bfloat16 and hands float32 on (mmseg calls its heads' forward directly, so the
    line is drawn at their conv_seg): the logits are resized in float32."""
    model = tiny_segmentor()
    with torch.no_grad():
        (expected, ) = model.test_step(batch('mmseg'))
    seen = {}
    record_outputs(model.decode_head.conv_seg, seen, 'classifier')  # before float32_outputs: the raw output
    float32_outputs(model)
    record_outputs(model.decode_head.conv_seg, seen, 'handed on')
    with torch.no_grad(), autocast(device_type='cpu'):
        (result, ) = model.test_step(batch('mmseg'))
    assert {output.dtype for output in seen['classifier']} == {torch.bfloat16}
    assert {output.dtype for output in seen['handed on']} == {torch.float32}
    logits, expected_logits = result.seg_logits.data, expected.seg_logits.data
    assert logits.dtype == torch.float32 and logits.shape == expected_logits.shape == (4, *IMAGE)
    assert relative_deviation(logits, expected_logits) < 3e-2 and not torch.equal(logits, expected_logits)


def test_training_mode_and_float32_runs_are_left_alone():
    """A training step (train mode) under autocast keeps mmengine's behaviour (a GPU's AmpOptimWrapper): the layers'
    outputs stay in autocast's dtype; without autocast every output is float32 as before."""
    model = float32_outputs(tiny_segmentor()).train()
    with torch.no_grad(), autocast(device_type='cpu'):
        features = model.extract_feat(torch.randn(2, 3, 64, 64))  # 2: batch norm statistics in training mode
        logits = model.decode_head.forward(features)
    assert logits.dtype == torch.bfloat16
    model.eval()
    with torch.no_grad():
        assert model.decode_head.forward(model.extract_feat(torch.randn(1, 3, 64, 64))).dtype == torch.float32


def test_a_deep_copy_computes_with_its_own_weights_and_hooks_never_stack():
    """An EMA or teacher model copied after mixed precision was set up: the copy's layers, under autocast, compute
    with the copy's weights (not the original's) and still hand float32 on; setting up either again adds nothing."""
    model = float32_outputs(tiny_detector())
    copied = randomize_whole_model(copy.deepcopy(model), seed=1).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = [feature.float() for feature in copied.extract_feat(image)]  # float32, hooks inactive
        with autocast(device_type='cpu'):
            ours, original = copied.extract_feat(image), model.extract_feat(image)
    assert all(feature.dtype == torch.float32 for feature in ours)
    assert max(relative_deviation(a, b) for a, b in zip(ours, plain)) < 3e-2
    assert min(relative_deviation(a, b) for a, b in zip(original, plain)) > 0.1  # the original's are other maps
    float32_outputs(model)
    float32_outputs(copied)
    for module in layer_modules(model) + layer_modules(copied):
        assert to_float32_hook_count(module) == 1


def test_float32_outputs_reaches_inside_a_tta_model_and_adds_its_hook_once():
    from mmseg.models import SegTTAModel
    segmentor = tiny_segmentor()
    tta = SegTTAModel(module=segmentor)
    float32_outputs(tta)
    float32_outputs(tta)
    modules = layer_modules(segmentor)
    assert segmentor.backbone in modules and segmentor.decode_head.conv_seg in modules
    assert {to_float32_hook_count(module) for module in modules} == {1}


def test_a_model_without_detector_or_segmentor_layout_is_refused():
    with pytest.raises(UnsupportedModelError, match='Linear is neither.*drop --amp, set test_cfg.fp16=False'):
        float32_outputs(torch.nn.Linear(2, 2))


def write_checkpoint(cfg, path):
    torch.save({'state_dict': build_model(cfg).state_dict()}, path)


def test_test_tool_with_a_config_fp16_evaluates_the_detector(tmp_path):
    """A config's test_cfg.fp16=True (mmengine's TestLoop switch, which alone fails in mmcv's NMS) evaluates the
    tiny detector through float32_outputs: float32 boxes, close to float32's own."""
    from mmdet.structures.bbox import bbox_overlaps
    data = write_coco(str(tmp_path / 'coco'), num_images=2)
    predictions = run_test_tool(tmp_path, TINY_CASCADE_CONFIG.format(base=CASCADE_T), data, [], ['test_cfg.fp16=True'],
                                'predictions.pkl')
    assert len(predictions['amp']) == len(predictions['fp32']) == 2
    for result, expected in zip(predictions['amp'], predictions['fp32']):
        boxes, expected_boxes = result['pred_instances']['bboxes'], expected['pred_instances']['bboxes'][:20]
        assert boxes.dtype == torch.float32 and len(boxes) == len(expected['pred_instances']['bboxes'])
        # The untrained detector's scores are nearly flat (about 0.02), so bfloat16's rounding may reorder them and
        # NMS keep other boxes; most of float32's best twenty are found again (observed: 17 to 20 of them at an
        # IoU of 0.8 or more; a broken head would find next to none).
        found = (bbox_overlaps(expected_boxes, boxes).max(dim=1).values >= 0.7).float().mean().item()
        assert found >= 0.7, f'{found:.0%} of the float32 boxes found again'


def test_test_tool_amp_evaluates_the_segmentor(tmp_path):
    """tools/test.py --amp: the tiny segmentor's label maps agree with float32's."""
    label_maps = run_test_tool(tmp_path, TINY_UPERNET_CONFIG.format(base=UPERNET_T), write_ade(str(tmp_path / 'ade')),
                               ['--amp'], [], 'maps')
    assert label_maps['fp32'] and label_maps['amp'].keys() == label_maps['fp32'].keys()
    for image, labels in label_maps['fp32'].items():
        assert (label_maps['amp'][image] == labels).mean() > 0.97


def run_test_tool(tmp_path, config_text, data_root, flags, options, out):
    """tools/test.py on a checkpoint of the config's model at random init, in float32 and with ``flags`` and
    ``options``: {'fp32': outputs, 'amp': outputs} (the .pkl's predictions, or {file: label map})."""
    import pickle
    config = tmp_path / 'config.py'
    config.write_text(config_text)
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    test = load_tool('test')
    common = ['--cfg-options', f'data_root={data_root}']
    write_checkpoint(test.build_config(test.parse_args([str(config), str(checkpoint), *common])), checkpoint)
    outputs = {}
    for name, extra_flags, extra_options in (('fp32', [], []), ('amp', flags, options)):
        path = tmp_path / name / out
        test.main([str(config), str(checkpoint), '--work-dir', str(tmp_path / name), '--out', str(path),
                   *extra_flags, *common, *extra_options])
        if out.endswith('.pkl'):
            with open(path, 'rb') as stream:
                outputs[name] = pickle.load(stream)
        else:
            outputs[name] = {file.name: read_label_map(file) for file in path.glob('*.png')}
    return outputs


def read_label_map(path):
    import mmcv
    return mmcv.imread(str(path), flag='unchanged')


def test_benchmark_amp_profile_parts_add_up_to_the_step(capsys):
    """benchmark.py --amp --profile: bfloat16 named, every part of the cascade timed, parts within the step."""
    load_tool('benchmark').main([CASCADE_T, '--amp', '--profile', '--shape', '96', '128', '--warmup', '1',
                                 '--iters', '1', '--device', 'cpu', '--cfg-options', 'model.test_cfg.rpn.max_per_img=8',
                                 'model.test_cfg.rcnn.score_thr=0'])
    lines = capsys.readouterr().out.splitlines()
    speed = float(lines[0].split(': ')[1].split(' images/s')[0])
    assert 'bfloat16 autocast' in lines[0] and int(lines[0].split(' detections')[0].split()[-1]) > 0
    parts = {line[:34].strip(): float(line[34:].split('ms')[0]) for line in lines[1:]}
    assert {'backbone', 'neck', 'rpn_head', 'rpn_head post-processing', 'bbox_roi_extractor', 'bbox_head',
            'mask_roi_extractor', 'mask_head', 'mask_head post-processing', 'rest of the step'} <= parts.keys()
    assert parts['rest of the step'] >= 0 and sum(parts.values()) == pytest.approx(1000 / speed, abs=len(parts))


def test_train_tool_validates_a_detector_with_a_config_val_fp16(tmp_path):
    """A config's val_cfg.fp16=True (mmengine's ValLoop switch, which alone runs mmcv's CPU NMS in bfloat16 and
    stops there) validates the tiny detector during tools/train.py: the layers in bfloat16 through
    float32_outputs, COCO metrics at the end of the epoch: those of the predictions it made (dumped beside)."""
    from mmdet.datasets import CocoDataset
    data = write_coco(str(tmp_path / 'coco'), num_images=2)
    config = tmp_path / 'config.py'
    dumped = tmp_path / 'val_predictions.pkl'
    config.write_text(TINY_CASCADE_CONFIG.format(base=CASCADE_T) + f"""
val_evaluator = [dict(type='CocoMetric', ann_file='data/coco/annotations/instances_val2017.json', metric=['bbox', 'segm']),
                 dict(type='DumpDetResults', out_file_path={str(dumped)!r})]
""")
    work_dir = tmp_path / 'work'
    # In its own process: mmengine keeps loggers and visualizers as process-wide instances.
    train = run_script([sys.executable, f'{ROOT}/tools/train.py', str(config), '--work-dir', str(work_dir),
                        '--cfg-options', f'data_root={data}', 'train_cfg.val_begin=1', 'val_cfg.fp16=True'])
    assert train.returncode == 0, train.stderr[-3000:]
    assert "val_cfg.fp16: the layers under mmengine's autocast" in train.stdout + train.stderr
    (metrics, ) = [record for record in scalars(work_dir) if 'coco/bbox_mAP' in record]
    expected = coco_metrics(dumped, osp.join(data, 'annotations', 'instances_val2017.json'),
                            CocoDataset.METAINFO['classes'])
    assert {key: metrics[key] for key in expected} == expected


def test_autocast_network_hook_applies_where_the_loop_sets_fp16():
    """The configs' AutocastNetworkHook (what makes test_cfg.fp16 work under mmdet's own tools/test.py too):
    float32_outputs on the model before a loop with fp16=True, nothing before one without."""
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from convnext_mm.mixed_precision import AutocastNetworkHook
    model = tiny_detector()
    runner = SimpleNamespace(model=model, logger=MMLogger.get_instance('autocast_network_hook_test'),
                             val_loop=SimpleNamespace(fp16=False), test_loop=SimpleNamespace(fp16=True))
    hook = AutocastNetworkHook()
    hook.before_val(runner)
    assert {to_float32_hook_count(module) for module in layer_modules(model)} == {0}
    hook.before_test(runner)
    modules = layer_modules(model)
    assert model.backbone in modules and model.neck in modules and model.roi_head.bbox_head[2] in modules
    assert model.roi_head.mask_head[2] in modules and model.rpn_head in modules
    assert {to_float32_hook_count(module) for module in modules} == {1}
