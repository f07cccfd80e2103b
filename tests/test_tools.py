"""The tools end to end on the CPU with tiny synthetic data: two-process training through tools/dist_train.sh
(torchrun, gloo) and the evaluation of its checkpoint (in one process and through tools/dist_test.sh), one-process
segmentation training and TTA test, tools/slurm_train.sh through a stand-in srun, tools/test.py on a demo config,
get_flops against docs/results.md, benchmark, the benchmarks' helpers (benchmarks/), convert_checkpoint, the
command-line errors, the decay-constructor check, and the CPU adaptations of the configs, printed as the
--cfg-options that give mmengine's Config the same."""
import argparse
import json
import math
import mmap
import os
import os.path as osp
import pickle
import re
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config, DictAction

import checkpoint_layouts
import paper_figures
from convnext_mm import ConvNeXt
from metrics_recomputed import coco_metrics, segmentation_metrics
from project import (CASCADE_T, MASK_RCNN_T, ROOT, UPERNET_T, config_path, free_port, load_tool, run_script,
                     scalars)
from tiny_data import write_ade
from tiny_models import TINY_CASCADE_CONFIG, TINY_UPERNET_CONFIG
# The tools' and benchmarks' helper modules (tools/, benchmarks/: on sys.path through project).
import config_utils  # noqa: E402
from config_utils import check_decay_constructor, load_config  # noqa: E402
from peak_memory import in_fresh_process, peak_rss_growth_of  # noqa: E402

# What tools/train.py applies and prints on a machine without CUDA for the cascade config in two processes.
CASCADE_CPU_OPTIONS = ('optim_wrapper.type=OptimWrapper env_cfg.dist_cfg.backend=gloo '
                       + ' '.join(f'model.roi_head.bbox_head.{i}.norm_cfg.type=BN' for i in range(3))
                       + ' model_wrapper_cfg.type=MMDistributedDataParallel model_wrapper_cfg.broadcast_buffers=False'
                       ' model_wrapper_cfg.find_unused_parameters=False model_wrapper_cfg.device_ids=None')


def test_two_processes_train_through_dist_train_sh(tiny_coco, tmp_path):
    config = tmp_path / 'tiny_cascade.py'
    config.write_text(TINY_CASCADE_CONFIG.format(base=CASCADE_T))
    work_dir = tmp_path / 'work'
    train = run_script(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), str(config), '2', '--work-dir',
                        str(work_dir), '--auto-scale-lr', '--cfg-options', f'data_root={tiny_coco}'],
                       PORT=str(free_port()))
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    log = train.stdout + train.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # one run of two processes
    # Printed once (by the first process), the options as given to the hosts' tools.
    assert log.count('No CUDA GPU: running') == 1
    assert f'No CUDA GPU: running tiny_cascade.py with --cfg-options {CASCADE_CPU_OPTIONS}\n' in log
    # --auto-scale-lr: the config's lr is for 16 images per batch; here 2 processes take 1 each.
    assert 'LR is set based on batch size of 16 and the current batch size is 2. Scaling the original LR by 0.125' \
        in log
    losses = [record['loss'] for record in scalars(work_dir) if 'loss' in record]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)  # 4 images / 2 processes x batch 1
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.is_file()

    # The trained detector, evaluated with COCO's metrics, its predictions dumped and drawn.
    predictions = tmp_path / 'predictions.pkl'
    metrics = load_tool('test').main([str(config), str(checkpoint), '--work-dir', str(work_dir), '--out',
                                      str(predictions), '--show-dir', 'painted', '--cfg-options',
                                      f'data_root={tiny_coco}',
                                      # mmengine keeps one visualizer per name per process: not a segmentor's
                                      # left by an earlier test
                                      'visualizer.name=detection_test_visualizer'])
    with open(predictions, 'rb') as f:
        assert len(pickle.load(f)) == 4
    # The figures of COCO's own evaluation (pycocotools) on the predictions dumped.
    from mmdet.datasets import CocoDataset
    expected = coco_metrics(predictions, osp.join(tiny_coco, 'annotations', 'instances_val2017.json'),
                            CocoDataset.METAINFO['classes'])
    assert {key: metrics[key] for key in expected} == expected
    assert len(list(work_dir.glob('*/painted/*.jpg'))) == 4  # mmdet's place: WORK_DIR/TIMESTAMP/SHOW_DIR

    # tools/dist_test.sh: two processes evaluate two images each and give the metrics of one process.
    test = run_script(['bash', osp.join(ROOT, 'tools', 'dist_test.sh'), str(config), str(checkpoint), '2',
                       '--work-dir', str(tmp_path / 'dist_test'), '--cfg-options', f'data_root={tiny_coco}'],
                      PORT=str(free_port()))
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    log = test.stdout + test.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    # tools/test.py prints the distributed run's options too; the optimizer wrapper does not matter to a test.
    test_options = CASCADE_CPU_OPTIONS.replace('optim_wrapper.type=OptimWrapper ', '')
    assert f'No CUDA GPU: running tiny_cascade.py with --cfg-options {test_options}\n' in log
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        (logged, ) = set(re.findall(rf'{key}: ([0-9.]+)', log))
        assert float(logged) == pytest.approx(metrics[key], abs=1e-4), key


def test_the_recomputed_coco_metrics_of_the_ground_truth_are_one(tiny_coco, tmp_path):
    """The known value that the tools' COCO figures are compared with: predictions that are the annotations
    score 1.0 (and a box moved off its object 0.0)."""
    from mmdet.datasets import CocoDataset
    from pycocotools import mask as masks
    ann_file = osp.join(tiny_coco, 'annotations', 'instances_val2017.json')
    with open(ann_file) as f:
        coco = json.load(f)
    predictions = []
    for image, annotation in zip(coco['images'], coco['annotations']):
        x, y, w, h = annotation['bbox']
        rle = masks.merge(masks.frPyObjects(annotation['segmentation'], image['height'], image['width']))
        predictions.append(dict(img_id=image['id'], pred_instances=dict(
            bboxes=torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32), scores=torch.ones(1),
            labels=torch.tensor([annotation['category_id'] - 1]), masks=[rle])))
    for shift, expected in ((0, 1.0), (40, 0.0)):
        for prediction in predictions:
            prediction['pred_instances']['bboxes'][:, 0::2] += shift
        with open(tmp_path / 'predictions.pkl', 'wb') as f:
            pickle.dump(predictions, f)
        metrics = coco_metrics(tmp_path / 'predictions.pkl', ann_file, CocoDataset.METAINFO['classes'])
        assert metrics['coco/bbox_mAP'] == metrics['coco/bbox_mAP_50'] == expected
    assert metrics['coco/segm_mAP'] == 1.0  # the masks stayed


def test_segmentation_trains_in_one_process_and_tests_with_tta(tmp_path, monkeypatch, capsys):
    ade = write_ade(str(tmp_path / 'ade'))
    config = tmp_path / 'tiny_upernet.py'
    config.write_text(TINY_UPERNET_CONFIG.format(base=UPERNET_T))
    work_dir = tmp_path / 'work'
    # In its own process: mmengine keeps loggers and visualizers as process-wide instances, and one left by an
    # earlier test in this process can take this run's scalars.
    train = run_script([sys.executable, osp.join(ROOT, 'tools', 'train.py'), str(config), '--work-dir', str(work_dir),
                        '--cfg-options', f'data_root={ade}', 'train_cfg.val_begin=2', 'train_cfg.val_interval=2'])
    assert train.returncode == 0, train.stderr[-3000:]
    if not torch.cuda.is_available():  # the config's fp16 AMP, as fp32 on this machine, printed as the option
        assert 'No CUDA GPU: running tiny_upernet.py with --cfg-options optim_wrapper.type=OptimWrapper\n' \
            in train.stdout
    records = scalars(work_dir)
    losses = [record['loss'] for record in records if 'loss' in record]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    (at_end_of_training, ) = [record for record in records if 'mIoU' in record]

    # tools/test.py on the saved checkpoint gives the metrics printed at the end of training, saves the predicted
    # label maps (--out) and paints the predictions (--show-dir), with the config as it is (one process, no
    # training: nothing to adapt to the CPU) ...
    monkeypatch.setattr(config_utils, 'cuda_available', lambda: False)
    test = load_tool('test')
    metrics = test.main([str(config), str(work_dir / 'iter_2.pth'), '--work-dir', str(work_dir / 'test'),
                         '--out', str(tmp_path / 'labels'), '--show-dir', str(tmp_path / 'painted'),
                         '--cfg-options', f'data_root={ade}', 'default_hooks.visualization.interval=1',
                         # mmengine keeps one visualizer per name per process: not the detector's of an earlier test
                         'visualizer.name=segmentation_test_visualizer'])
    assert {key: metrics[key] for key in ('aAcc', 'mIoU', 'mAcc')} == \
        {key: at_end_of_training[key] for key in ('aAcc', 'mIoU', 'mAcc')}
    labels = {path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in (tmp_path / 'labels').iterdir()}
    assert sorted(labels) == ['ADE_0.png', 'ADE_1.png'] and all(m.shape == (64, 64) for m in labels.values())
    painted = sorted(path.name for path in (tmp_path / 'painted').rglob('*.png'))  # test_ADE_0.jpg_0.png, ...
    assert len(painted) == 2 and 'ADE_0' in painted[0] and 'ADE_1' in painted[1]
    assert 'No CUDA GPU' not in capsys.readouterr().out
    # ... and runs mmseg's test-time augmentation: 6 scales and flips, whose averaged logits give other labels.
    tta_metrics = test.main([str(config), str(work_dir / 'iter_2.pth'), '--tta', '--work-dir', str(work_dir),
                             '--out', str(tmp_path / 'tta_labels'), '--cfg-options', f'data_root={ade}'])
    tta_labels = {path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                  for path in (tmp_path / 'tta_labels').iterdir()}
    assert sorted(tta_labels) == sorted(labels) and all(m.shape == (64, 64) for m in tta_labels.values())
    assert any(not np.array_equal(labels[name], tta_labels[name]) for name in labels)
    # Each test's aAcc and mIoU are those counted on its saved label maps against the annotations.
    truth = {name: cv2.imread(osp.join(ade, 'annotations', 'validation', name), cv2.IMREAD_UNCHANGED)
             for name in labels}
    for saved, logged in ((labels, metrics), (tta_labels, tta_metrics)):
        counted = segmentation_metrics([(saved[name], truth[name]) for name in truth])
        assert {key: logged[key] for key in counted} == pytest.approx(counted, abs=0.011)
    # A classifier that says "class 1 of the files" (0 after reduce_zero_label) everywhere: right on the 3072 of
    # each image's 4096 pixels outside its rectangle, IoU 0.75 there and 0 for the two rectangles' classes.
    checkpoint = torch.load(work_dir / 'iter_2.pth', weights_only=False)
    classifier_weight = checkpoint['state_dict']['decode_head.conv_seg.weight']
    classifier_weight.zero_()
    checkpoint['state_dict']['decode_head.conv_seg.bias'].copy_(torch.eye(len(classifier_weight))[0])
    torch.save(checkpoint, tmp_path / 'one_class.pth')
    one_class = test.main([str(config), str(tmp_path / 'one_class.pth'), '--work-dir', str(work_dir / 'one_class'),
                           '--cfg-options', f'data_root={ade}'])
    assert (one_class['aAcc'], one_class['mIoU']) == (75.0, 25.0)


def test_tta_pipeline_goes_to_each_dataset_inside_a_wrapper(tmp_path):
    config = tmp_path / 'concat_test_sets.py'
    config.write_text(f"""_base_ = {UPERNET_T!r}
_ade = dict(type='ADE20KDataset', data_root='data/ade', data_prefix=dict(img_path='images', seg_map_path='maps'))
test_dataloader = dict(dataset=dict(_delete_=True, type='ConcatDataset', datasets=[_ade, _ade]))
""")
    checkpoint = tmp_path / 'weights.pth'
    checkpoint.write_bytes(b'')
    test = load_tool('test')
    cfg = test.build_config(test.parse_args([str(config), str(checkpoint), '--tta']))
    wrapper = cfg.test_dataloader.dataset
    assert 'pipeline' not in wrapper and cfg.model.type == 'SegTTAModel'
    assert [dataset.pipeline for dataset in wrapper.datasets] == [cfg.tta_pipeline] * 2


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the machine without a GPU')
def test_slurm_train_sh_runs_train_py_through_srun(tmp_path):
    """A stand-in srun (on PATH) records its arguments and runs the command as Slurm's task 0 of 1; on a machine
    without a GPU, tools/train.py then stops with the message that --launcher slurm needs CUDA GPUs."""
    stand_in = tmp_path / 'bin' / 'srun'
    stand_in.parent.mkdir()
    stand_in.write_text("""#!/usr/bin/env bash
printf '%s\\n' "$@" > "$SRUN_ARGUMENTS"
while [[ $# -gt 0 ]]; do
    case "$1" in
        -p) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 SLURM_NODELIST=localhost exec "$@"
""")
    stand_in.chmod(0o755)
    arguments = tmp_path / 'srun_arguments'
    train = run_script(['bash', osp.join(ROOT, 'tools', 'slurm_train.sh'), 'gpu_partition', 'convnext_job', CASCADE_T,
                        str(tmp_path / 'work'), '--auto-scale-lr'],
                       PATH=os.pathsep.join([str(stand_in.parent), osp.dirname(sys.executable), os.environ['PATH']]),
                       SRUN_ARGUMENTS=str(arguments), GPUS='16', GPUS_PER_NODE='8', SRUN_ARGS='--mem=0')
    assert arguments.read_text().splitlines() == [
        '-p', 'gpu_partition', '--job-name=convnext_job', '--gres=gpu:8', '--ntasks=16', '--ntasks-per-node=8',
        '--cpus-per-task=5', '--kill-on-bad-exit=1', '--mem=0', 'python', '-u', osp.join(ROOT, 'tools', 'train.py'),
        CASCADE_T, f'--work-dir={tmp_path / "work"}', '--launcher=slurm', '--auto-scale-lr']
    assert train.returncode == 1 and 'error: --launcher slurm needs CUDA GPUs' in train.stderr, train.stderr[-3000:]


def test_test_tool_on_the_demo_config_with_data_root(tmp_path, monkeypatch):
    """tools/test.py on the demo config evaluates on the demo's validation data, generated at data_root (the model
    shrunk with --cfg-options, and 4 images, to keep the test short)."""
    from config_utils import build_model
    from convnext_mm.demo_data import MARKER
    monkeypatch.chdir(tmp_path)  # nothing may be written to ./data/demo
    options = [f'data_root={tmp_path / "demo_ade"}', 'model.backbone.arch=atto',
               'model.decode_head.in_channels=[40,80,160,320]', 'model.decode_head.channels=16',
               'model.auxiliary_head.in_channels=160', 'model.auxiliary_head.channels=8',
               'test_dataloader.dataset.indices=4']
    checkpoint = tmp_path / 'demo_model.pth'
    checkpoint.write_bytes(b'')
    test = load_tool('test')
    argv = [config_path('demo/upernet_convnext_t_demo.py'), str(checkpoint), '--work-dir', str(tmp_path / 'work'),
            '--cfg-options', *options]
    cfg = test.build_config(test.parse_args(argv))
    torch.save({'state_dict': build_model(cfg).state_dict()}, checkpoint)
    metrics = test.main(argv)
    assert {'aAcc', 'mIoU', 'mAcc'} <= set(metrics)
    assert (tmp_path / 'demo_ade' / MARKER).is_file() and not (tmp_path / 'data').exists()
    (log, ) = (tmp_path / 'work').glob('*/*.log')
    assert '| circle |' in log.read_text().replace('  ', ' ').replace('  ', ' ')  # the demo's classes, evaluated


def test_missing_imagenet_checkpoint_stops_training_with_the_fix(tiny_coco, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where data/pretrained/ does not exist, whatever the repository holds
    with pytest.raises(SystemExit) as exit_info:
        load_tool('train').main([CASCADE_T, '--work-dir', str(tmp_path), '--cfg-options', f'data_root={tiny_coco}',
                                 'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False'])
    message = str(exit_info.value.code)
    assert message.startswith('error: ') and 'data/pretrained/convnext_tiny_1k_224.pth' in message
    assert 'not found' in message


def test_test_tool_refuses_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('test').parse_args([CASCADE_T, str(tmp_path / 'nothing.pth')])
    assert exit_info.value.code == 2 and 'nothing.pth' in capsys.readouterr().err


@pytest.mark.parametrize('config', [MASK_RCNN_T, UPERNET_T])
def test_get_flops_gives_the_numbers_of_docs_results_at_the_paper_input_size(config, capsys):
    """tools/get_flops.py's row: the input size, the parameters and FLOPs counted here and the paper's, as
    docs/results.md gives them ('params here', 'FLOPs here', 'params', 'FLOPs' of the row linking the config)."""
    load_tool('get_flops').main([config])
    (row, ) = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(config)]
    # columns: config, input, params (M), paper params, GFLOPs, paper GFLOPs (the paper's Tables 3 and 4)
    assert row[1] == {MASK_RCNN_T: '1280x800', UPERNET_T: '2048x512'}[config]
    results = paper_figures.by_config()[osp.relpath(config, osp.join(ROOT, 'configs'))]
    assert (f'{row[2]}M', f'{row[4]}G') == (results['params here'], results['FLOPs here'])
    assert (f'{row[3]}M', f'{row[5]}G') == (results['params'], results['FLOPs'])


@pytest.mark.parametrize('config', [CASCADE_T, UPERNET_T])
def test_benchmark_reports_the_speed_of_the_timed_test_steps(config, capsys, monkeypatch):
    """The whole model's test_step runs warm-up + timed times on an image of --shape, and the speed reported is
    that of the timed steps (each timed here as well, from outside the tool)."""
    import time

    from mmengine.model import BaseModel
    steps = []
    test_step = BaseModel.test_step  # the detectors' and segmentors' own

    def timed_test_step(model, data):
        start = time.perf_counter()
        result = test_step(model, data)
        steps.append((tuple(data['inputs'][0].shape), time.perf_counter() - start))
        return result

    monkeypatch.setattr(BaseModel, 'test_step', timed_test_step)
    args = [config, '--shape', '96', '128', '--warmup', '1', '--iters', '2', '--device', 'cpu']
    if config == CASCADE_T:  # few proposals: the untrained detector's 1000 would dominate the time of this test
        args += ['--cfg-options', 'model.test_cfg.rpn.max_per_img=8']
    load_tool('benchmark').main(args)
    output = capsys.readouterr().out
    speed = float(output.split(': ')[1].split(' images/s')[0])
    assert '128x96 input' in output and '2 timed after 1 warm-up' in output
    assert [shape for shape, _ in steps] == [(3, 96, 128)] * 3
    timed = sum(seconds for _, seconds in steps[1:])
    assert 2 / speed == pytest.approx(timed, rel=0.05, abs=0.02)


def resident_pages(mebibytes):
    """Anonymous memory of that size, every page written: resident until closed, whatever malloc holds."""
    import mmap
    memory = mmap.mmap(-1, mebibytes * 2**20)
    for offset in range(0, len(memory), mmap.PAGESIZE):
        memory[offset] = 1
    return memory


def test_benchmarks_peak_growth_counts_the_step_alone():
    """benchmarks/peak_memory.py counts what a step adds to the resident set, whatever peak the process reached
    before: exactly, for memory the step still holds; for memory it has released, as the kernel recorded the peak
    at the release, from RSS counters it keeps per CPU and sums lazily (file, anonymous and shared pages, each off
    by fewer than its batch of max(32, 2 x CPUs) pages per CPU)."""
    resident_pages(256).close()  # the process's peak now stays 256 MiB above what it holds
    held = []
    assert peak_rss_growth_of(lambda: held.append(resident_pages(32))) == 32 * 2**20
    held.pop().close()
    released = peak_rss_growth_of(lambda: resident_pages(32).close())
    cpus = os.cpu_count()
    lazy_sum = 3 * max(32, 2 * cpus) * cpus * mmap.PAGESIZE
    assert abs(released - 32 * 2**20) < lazy_sum, f'{(released - 32 * 2**20) / 2**10:.0f} KiB'


def test_benchmarks_measure_in_a_fresh_process_with_this_ones_threads(one_thread):
    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(torch.get_num_threads) == 1  # one_thread's, not torch's default of one per core


@pytest.mark.parametrize('size', [(800, 1333), (256, 320)])
def test_detector_memory_benchmark_boxes_fit_the_image_size(size):
    from benchmark_detector_memory import synthetic_detection_batch
    batch = synthetic_detection_batch(size)
    height, width = size
    assert tuple(batch['inputs'][0].shape) == (3, height, width)
    instances = batch['data_samples'][0].gt_instances
    boxes = instances.bboxes
    if size == (800, 1333):
        assert boxes.tolist() == [[100, 120, 500, 600], [600, 50, 1000, 400], [300, 400, 1200, 780]]
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all() and (boxes >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
    assert instances.masks.masks.reshape(3, -1).sum(1).tolist() == areas


def test_convert_checkpoint_writes_a_clean_backbone_file(tmp_path, capsys):
    backbone = ConvNeXt(arch='atto', layer_scale_init_value=1.0)
    source = tmp_path / 'convnext_atto_official.pth'
    torch.save(checkpoint_layouts.official_layout(backbone), source)
    destination = tmp_path / 'backbone.pth'
    convert_checkpoint = load_tool('convert_checkpoint')
    convert_checkpoint.main([str(source), str(destination)])
    assert 'depths=[2, 2, 6, 2] dims=[40, 80, 160, 320]' in capsys.readouterr().out
    converted = torch.load(destination, weights_only=True)
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith('norm')}
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)

    not_convnext = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7)}}, not_convnext)
    with pytest.raises(SystemExit) as exit_info:
        convert_checkpoint.main([str(not_convnext), str(tmp_path / 'out.pth')])
    assert 'resnet.pth' in str(exit_info.value.code) and 'no ConvNeXt backbone' in str(exit_info.value.code)
    assert not (tmp_path / 'out.pth').exists()


# Each layout of tests/checkpoint_layouts.py (the real files' key names), whether it is V2, the output norms its
# files hold, and how many of its tensors belong to no backbone (classifier; FCMAE: decoder and mask token).
CONVERTED_LAYOUTS = {'timm': (False, (), 4), 'mmpretrain': (False, (3, ), 2), 'official_v2': (True, (), 4),
                     'fcmae_v2': (True, (), 2)}


@pytest.mark.parametrize('layout', CONVERTED_LAYOUTS)
def test_convert_checkpoint_from_timm_mmpretrain_and_v2_files(layout, tmp_path, capsys):
    use_grn, norms, left_out = CONVERTED_LAYOUTS[layout]
    write = {'timm': checkpoint_layouts.timm_layout, 'mmpretrain': checkpoint_layouts.mmpretrain_layout,
             'official_v2': checkpoint_layouts.official_layout, 'fcmae_v2': checkpoint_layouts.fcmae_layout}[layout]
    source_model = checkpoint_layouts.make_source(use_grn)
    source, destination = tmp_path / f'{layout}.pth', tmp_path / 'backbone.pth'
    torch.save(write(source_model), source)
    load_tool('convert_checkpoint').main([str(source), str(destination)])
    out = capsys.readouterr().out
    assert f'ConvNeXt{" V2" if use_grn else ""} depths=[1, 1, 2, 1] dims=[8, 16, 32, 64]' in out
    assert f'left out {left_out} tensors of no backbone' in out
    converted = torch.load(destination, weights_only=True)
    expected = {k: v for k, v in source_model.state_dict().items()
                if not k.startswith('norm') or int(k[4]) in norms}
    assert sorted(converted) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)


def test_convert_checkpoint_counts_what_it_leaves_out_and_names_the_source_when_its_check_fails(tmp_path, capsys):
    convert_checkpoint = load_tool('convert_checkpoint')
    backbone = ConvNeXt(arch='atto').state_dict()
    with_extras = tmp_path / 'backbone_and_extras.pth'
    torch.save({**backbone, 'mask_token': torch.zeros(1, 320), 'proj.weight': torch.zeros(4, 320)}, with_extras)
    convert_checkpoint.main([str(with_extras), str(tmp_path / 'out.pth')])
    assert 'left out 2 tensors of no backbone' in capsys.readouterr().out
    assert sorted(torch.load(tmp_path / 'out.pth', weights_only=True)) == sorted(backbone)

    # Block 3 of stage 2 is missing: the converted file fails its check, which must name SOURCE.
    gap = tmp_path / 'a_block_missing.pth'
    torch.save({k: v for k, v in backbone.items() if not k.startswith('stages.2.3.')}, gap)
    with pytest.raises(SystemExit) as exit_info:
        convert_checkpoint.main([str(gap), str(tmp_path / 'gap_out.pth')])
    message = str(exit_info.value.code)
    assert str(gap) in message and 'missing from the weights: stages.2.3.' in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_block_missing.pth', 'backbone_and_extras.pth', 'out.pth']


def host_cfg_options(printed):
    """The config options of a host tool's command line ``--cfg-options`` + the options printed, as mmdet's and
    mmseg's tools/train.py parse them (mmengine's DictAction)."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *printed.split()]).cfg_options


def test_cpu_adaptation_of_a_config_is_the_cfg_options_it_prints(monkeypatch):
    monkeypatch.setattr(config_utils, 'cuda_available', lambda: False)
    cfg = load_config(CASCADE_T)
    lines = config_utils.fit_config_to_machine(cfg, distributed=True)
    assert lines[0] == f'No CUDA GPU: running convnext_t_3x.py with --cfg-options {CASCADE_CPU_OPTIONS}'
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert 'SyncBN' not in str(cfg.model) and [h.norm_cfg.type for h in cfg.model.roi_head.bbox_head] == ['BN'] * 3
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                                         find_unused_parameters=False, device_ids=None)
    # The printed options make mmengine's Config, as the hosts' tools read it, the same config.
    host = Config.fromfile(CASCADE_T)
    host.merge_from_dict(host_cfg_options(lines[0].split(' --cfg-options ')[1]))
    assert host.to_dict() == cfg.to_dict()

    # One process: mmengine's Runner reverts SyncBN itself; a test run builds no optimizer wrapper.
    cfg = load_config(CASCADE_T)
    assert config_utils.fit_config_to_machine(cfg, distributed=False)[0] == \
        'No CUDA GPU: running convnext_t_3x.py with --cfg-options optim_wrapper.type=OptimWrapper'
    assert config_utils.fit_config_to_machine(load_config(CASCADE_T), distributed=False, training=False) == []
    # --amp on the CPU: bfloat16 training.
    cfg = load_config(UPERNET_T)
    assert config_utils.fit_config_to_machine(cfg, distributed=False, amp=True)[0] == \
        'No CUDA GPU: running convnext_t_512_160k_ade20k.py with --cfg-options optim_wrapper.type=CPUAmpOptimWrapper'
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'

    monkeypatch.setattr(config_utils, 'cuda_available', lambda: True)
    cfg = load_config(CASCADE_T)
    assert config_utils.fit_config_to_machine(cfg, distributed=True) == []
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.env_cfg.dist_cfg.backend == 'nccl'


def test_cpu_adaptation_leaves_out_what_fp32_training_does_not_take(tmp_path, monkeypatch, capsys):
    """A config of its own with AMP's loss_scale: fp32 training leaves it out and says so."""
    monkeypatch.setattr(config_utils, 'cuda_available', lambda: False)
    config = tmp_path / 'with_loss_scale.py'
    config.write_text(f"_base_ = {UPERNET_T!r}\noptim_wrapper = dict(loss_scale='dynamic')\n")
    cfg = load_tool('train').build_config(load_tool('train').parse_args([str(config)]))
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    printed = capsys.readouterr().out
    assert 'No CUDA GPU: running with_loss_scale.py with --cfg-options optim_wrapper.type=OptimWrapper\n' in printed
    assert 'also left out optim_wrapper.loss_scale, which OptimWrapper does not take' in printed


@pytest.mark.parametrize('constructor', [None, 'DefaultOptimWrapperConstructor'])
def test_decay_settings_without_a_decay_constructor_are_refused(constructor, tmp_path):
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-4), paramwise_cfg=dict(decay_rate=0.7, num_layers=6))
    if constructor:
        cfg['constructor'] = constructor
    message = (r"sets \['decay_rate', 'num_layers'\], which DefaultOptimWrapperConstructor ignores.*"
               r"Add constructor='ConvNeXtLayerDecayOptimizerConstructor'")
    with pytest.raises(ValueError, match=message):
        check_decay_constructor(cfg)
    for constructor in ('ConvNeXtLayerDecayOptimizerConstructor', 'LearningRateDecayOptimizerConstructor'):
        check_decay_constructor({**cfg, 'constructor': constructor})
    check_decay_constructor(dict(optimizer=dict(type='AdamW', lr=1e-4), paramwise_cfg=dict(norm_decay_mult=0.)))
    # tools/train.py stops with it before a run.
    config = tmp_path / 'no_decay_constructor.py'
    config.write_text(f"_base_ = {UPERNET_T!r}\noptim_wrapper = dict(_delete_=True, type='OptimWrapper', "
                      "optimizer=dict(type='AdamW', lr=1e-4), paramwise_cfg=dict(decay_rate=0.7, num_layers=6))\n")
    train = load_tool('train')
    with pytest.raises(SystemExit, match='error: optim_wrapper.paramwise_cfg ' + message):
        train.build_config(train.parse_args([str(config)]))


def test_data_root_option_moves_every_dataset_path():
    cfg = load_config(CASCADE_T, {'data_root': '/datasets/coco', 'train_dataloader.batch_size': 4})
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.train_dataloader.dataset.data_root == '/datasets/coco/'
    assert cfg.test_dataloader.dataset.data_root == '/datasets/coco/'
    assert cfg.val_evaluator.ann_file == '/datasets/coco/annotations/instances_val2017.json'
    assert 'data/coco' not in str({k: cfg[k] for k in ('train_dataloader', 'val_dataloader', 'test_evaluator')})

    cfg = load_config(UPERNET_T, {'data_root': '/datasets/ade'})
    assert cfg.train_dataloader.dataset.data_root == cfg.val_dataloader.dataset.data_root == '/datasets/ade'
