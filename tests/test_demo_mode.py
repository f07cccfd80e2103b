"""Demo mode: configs/demo/, the paper's configs on the generated data, with their model, pipelines, optimizer and
metric; and the demo run by mmdet's own tools/train.py and tools/test.py as by ours, with the same figures.

Training to the demo's targets takes minutes (``make demo``, ``make demo-seg``); these tests check what the demo
configs change and keep, that the data passes the checks, one real training step of each model, a tiny run of
the detection demo through both pairs of tools, and that a demo checkpoint given with its paper config is an
error naming the demo config.
"""
import argparse
import json
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import pytest
import torch
from mmengine.runner import Runner

from convnext_mm.demo import DemoDataHook
from convnext_mm.demo_data import CLASSES, MARKER, SEG_CLASSES
from project import CASCADE_T, ROOT, UPERNET_T, config_path, host_tool, load_tool
from tiny_models import assert_every_path_got_a_gradient, record_gradients_on_every_path
# The tools' helper modules (tools/: on sys.path through project).
from config_utils import build_model, config_from_command_line, fit_config_to_machine, load_config  # noqa: E402
from dataset_checks import check_datasets  # noqa: E402
from trained_model import CheckpointMismatchError, check_fits  # noqa: E402

CASCADE_DEMO = config_path('demo/cascade_convnext_t_demo.py')
UPERNET_DEMO = config_path('demo/upernet_convnext_t_demo.py')
ISO_DEMO = config_path('demo/mask_rcnn_convnext_iso_s_demo.py')
# paper config -> its demo config
DEMO_OF = {CASCADE_T: CASCADE_DEMO, UPERNET_T: UPERNET_DEMO,
           config_path('mask_rcnn/convnext_iso_s_lsj_100e.py'): ISO_DEMO}


@pytest.fixture(scope='module')
def demo_cwd(tmp_path_factory):
    """A working directory where the demo configs' DemoDataHook writes data/demo/ (the whole sets: seconds)."""
    return tmp_path_factory.mktemp('demo_cwd')


def hook_types(cfg):
    return [hook['type'] for hook in cfg.custom_hooks]


def test_detection_demo_config_keeps_the_model_pipelines_optimizer_and_metric():
    paper, cfg = load_config(CASCADE_T), load_config(CASCADE_DEMO)
    assert cfg.model.type == paper.model.type == 'CascadeRCNN'
    assert cfg.model.backbone.arch == 'tiny' and cfg.model.backbone.init_cfg is None  # random init
    assert [h.type for h in cfg.model.roi_head.bbox_head] == [h.type for h in paper.model.roi_head.bbox_head]
    assert [h.bbox_coder.target_stds for h in cfg.model.roi_head.bbox_head] == \
        [h.bbox_coder.target_stds for h in paper.model.roi_head.bbox_head]
    assert {h.num_classes for h in cfg.model.roi_head.bbox_head} == {cfg.model.roi_head.mask_head.num_classes} \
        == {len(CLASSES)}
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == CLASSES  # what demo_data generates
    assert [s.sampler.num for s in cfg.model.train_cfg.rcnn] == [16] * 3
    assert [s.assigner.pos_iou_thr for s in cfg.model.train_cfg.rcnn] == [0.5, 0.6, 0.7]
    assert cfg.optim_wrapper.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert cfg.optim_wrapper.type == 'OptimWrapper' and fit_config_to_machine(cfg, distributed=False) == []
    assert cfg.val_evaluator.type == cfg.test_evaluator.type == 'CocoMetric'
    assert cfg.work_dir.endswith('convnext_t_3x_demo')
    # The paper config's hooks, then the demo's own two.
    assert hook_types(cfg) == hook_types(paper) + ['DemoDataHook', 'EvalProgressBarHook']


def test_segmentation_demo_config_keeps_the_model_pipelines_optimizer_and_metric():
    cfg = load_config(UPERNET_DEMO)
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.backbone.init_cfg is None
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == len(SEG_CLASSES)
    assert tuple(cfg.val_dataloader.dataset.metainfo.classes) == SEG_CLASSES
    assert cfg.optim_wrapper.paramwise_cfg.decay_type == 'stage_wise' and cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.val_evaluator.type == 'IoUMetric'
    assert cfg.train_cfg.max_iters == 160 and cfg.work_dir.endswith('convnext_t_512_160k_ade20k_demo')
    assert 'DemoDataHook' in hook_types(cfg) and 'EvalProgressBarHook' in hook_types(cfg)


def test_tools_refuse_a_demo_flag(capsys):
    """The demo configs are paths: the tools have no --demo."""
    for tool, argv in (('train', [CASCADE_T, '--demo']), ('test', [CASCADE_T, CASCADE_T, '--demo']),
                       ('infer', [CASCADE_T, CASCADE_T, ROOT, '--demo']), ('benchmark', [CASCADE_T, '--demo']),
                       ('export_onnx', [CASCADE_T, CASCADE_T, '--out', 'x.onnx', '--demo'])):
        with pytest.raises(SystemExit) as exit_info:
            load_tool(tool).parse_args(argv)
        assert exit_info.value.code == 2 and 'unrecognized arguments: --demo' in capsys.readouterr().err, tool


@pytest.mark.parametrize('paper', list(DEMO_OF), ids=['cascade', 'upernet', 'mask_rcnn_iso'])
def test_a_demo_checkpoint_with_its_paper_config_is_an_error_naming_the_demo_config(paper, tmp_path):
    """tools/infer.py's and export_onnx.py's whole-model check: the demo's classes in the checkpoint, the paper
    config's model; the message names the demo config that inherits the paper config."""
    demo_cfg = load_config(DEMO_OF[paper])
    demo_cfg.model.backbone.init_cfg = None
    classes = CLASSES if demo_cfg.default_scope == 'mmdet' else SEG_CLASSES
    checkpoint = dict(meta=dict(dataset_meta=dict(classes=classes)), state_dict=build_model(demo_cfg).state_dict())
    paper_cfg = load_config(paper)
    paper_cfg.model.backbone.init_cfg = None
    with pytest.raises(CheckpointMismatchError) as error:
        check_fits(build_model(paper_cfg), checkpoint, 'demo.pth', paper)
    message = str(error.value)
    assert message.startswith(f'checkpoint demo.pth does not fit the model of {paper}: ')
    assert message.endswith("The checkpoint holds the demo's classes: give the demo config it was trained with, "
                            f'{osp.relpath(DEMO_OF[paper])}.')
    assert sorted(check_fits(build_model(demo_cfg), checkpoint, 'demo.pth', DEMO_OF[paper])) == \
        sorted(checkpoint['state_dict'])


@pytest.mark.parametrize('config', [CASCADE_DEMO, UPERNET_DEMO])
def test_one_training_step_on_the_demo_data(config, demo_cwd, monkeypatch, tmp_path, one_thread):
    monkeypatch.chdir(demo_cwd)
    cfg = load_config(config)
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)  # its DemoDataHook generates the data, if not there yet
    kind = 'coco' if cfg.default_scope == 'mmdet' else 'ade'
    assert (demo_cwd / 'data' / 'demo' / kind / MARKER).is_file()
    check_datasets(cfg, ('train', 'val', 'test'))
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.model.train()
    gradients = record_gradients_on_every_path(runner.model.backbone)
    losses = runner.model.train_step(next(iter(runner.train_dataloader)), runner.optim_wrapper)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert_every_path_got_a_gradient(gradients)


def test_data_root_option_puts_the_demo_data_there(demo_cwd, tmp_path, monkeypatch):
    from mmseg.registry import HOOKS
    monkeypatch.chdir(demo_cwd)
    elsewhere = tmp_path / 'elsewhere' / 'ade'
    args = argparse.Namespace(config=UPERNET_DEMO, launcher='none', work_dir=None,
                              cfg_options={'data_root': str(elsewhere), 'train_cfg.max_iters': 7})
    cfg = config_from_command_line(args)
    assert cfg.train_cfg.max_iters == 7  # the other options still apply
    for split in ('train', 'val', 'test'):
        assert cfg[f'{split}_dataloader'].dataset.data_root == str(elsewhere)
    (hook, ) = [hook for hook in cfg.custom_hooks if hook.type == 'DemoDataHook']
    HOOKS.build(hook)
    assert (elsewhere / MARKER).is_file()  # generated there
    check_datasets(cfg, ('train', 'val', 'test'))


def test_demo_data_never_replaces_a_folder_of_other_files(tmp_path):
    real = tmp_path / 'coco'
    (real / 'annotations').mkdir(parents=True)
    (real / 'annotations' / 'instances_train2017.json').write_text('{}')
    with pytest.raises(ValueError, match=r"coco' holds files but no demo data .* give a new or empty folder"):
        DemoDataHook(kind='coco', data_root=str(real))
    assert (real / 'annotations' / 'instances_train2017.json').read_text() == '{}'


# The detection demo shrunk to seconds: an atto backbone, 4 training and 2 validation images, one epoch.
TINY_DEMO = ['model.backbone.arch=atto', 'model.neck.in_channels=[40,80,160,320]', 'train_dataloader.dataset.indices=4',
             'val_dataloader.dataset.indices=2', 'test_dataloader.dataset.indices=2', 'train_cfg.max_epochs=1',
             'train_cfg.val_interval=1', 'model.test_cfg.rcnn.score_thr=0.0']  # untrained: keep boxes to compare


def run(command, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1')  # the same sums in both runs, and no spinning threads
    done = subprocess.run([sys.executable, *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def last_metrics(work_dir, prefix='coco/'):
    """The metrics of the last validation or test in a work dir (mmengine's log of records, TIMESTAMP.json)."""
    records = []
    for directory, _, files in sorted(os.walk(work_dir)):
        for name in sorted(files):
            if re.fullmatch(r'\d{8}_\d{6}\.json', name):
                with open(osp.join(directory, name)) as f:
                    records += [json.loads(line) for line in f if line.strip()]
    (*_, last) = [record for record in records if f'{prefix}bbox_mAP' in record]
    return {key: value for key, value in last.items() if key.startswith(prefix)}


def test_mmdets_own_tools_train_and_test_the_demo_config_as_ours_do(demo_cwd, tmp_path):
    """Our tools/train.py on the demo config, then mmdet's own .mim/tools/train.py on the config it wrote into the
    work dir: the same final validation. Both tools/test.py on that checkpoint: the same predictions and metrics,
    with the config's hooks."""
    ours = tmp_path / 'ours'
    run([osp.join(ROOT, 'tools', 'train.py'), CASCADE_DEMO, '--work-dir', str(ours),
         '--cfg-options', *TINY_DEMO], demo_cwd)
    dumped = ours / 'cascade_convnext_t_demo.py'
    assert dumped.is_file()
    hosts = tmp_path / 'mmdet'
    run([host_tool('mmdet', 'train'), str(dumped), '--work-dir', str(hosts)], demo_cwd)
    trained = last_metrics(ours)
    assert last_metrics(hosts) == trained
    weights = [torch.load(work_dir / 'epoch_1.pth')['state_dict'] for work_dir in (ours, hosts)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])

    checkpoint = str(hosts / 'epoch_1.pth')
    predictions = {}
    for name, tool in (('ours', osp.join(ROOT, 'tools', 'test.py')), ('mmdet', host_tool('mmdet', 'test'))):
        out = tmp_path / f'{name}.pkl'
        done = run([tool, str(dumped), checkpoint, '--work-dir', str(tmp_path / f'test_{name}'), '--out', str(out)],
                   demo_cwd)
        # The config's CPUMemoryReuseHook acts in the test run of either tool.
        assert 'CPUMemoryReuseHook: glibc keeps freed blocks of up to 1024 MiB for reuse during testing' in \
            done.stdout + done.stderr, name
        assert last_metrics(tmp_path / f'test_{name}') == trained, name
        with open(out, 'rb') as f:
            predictions[name] = pickle.load(f)
    assert len(predictions['ours']) == len(predictions['mmdet']) == 2
    for mine, theirs in zip(predictions['ours'], predictions['mmdet']):
        assert len(mine['pred_instances']['scores']) > 0
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(mine['pred_instances'][key], theirs['pred_instances'][key]), key
