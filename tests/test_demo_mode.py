"""Demo mode: the paper's configs on the generated data, with their model, pipelines, optimizer and metric.

Training to the demo's targets takes minutes (``make demo``, ``make demo-seg``); these tests check what demo
mode changes and keeps, that the data passes the checks, and one real training step of each model.
"""
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

from convnext_mm.data_checks import check_datasets
from convnext_mm.demo import DET, SEG, demo_config
from convnext_mm.demo_data import CLASSES, SEG_CLASSES
from convnext_mm.runtime import fit_config_to_machine, load_config
from tiny_models import assert_every_path_got_a_gradient, one_thread, record_gradients_on_every_path  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CASCADE_T = osp.join(ROOT, 'configs', 'cascade', 'convnext_t_3x.py')
UPERNET_T = osp.join(ROOT, 'configs', 'upernet', 'convnext_t_512_160k_ade20k.py')


@pytest.fixture(scope='module')
def demo_cwd(tmp_path_factory):
    """A working directory where demo mode writes data/demo/ (the whole demo sets: a few seconds)."""
    return tmp_path_factory.mktemp('demo_cwd')


def test_detection_demo_keeps_the_model_pipelines_optimizer_and_metric(demo_cwd, monkeypatch):
    monkeypatch.chdir(demo_cwd)
    original = load_config(CASCADE_T)
    cfg = demo_config(load_config(CASCADE_T))
    assert cfg.model.type == original.model.type == 'CascadeRCNN'
    assert cfg.model.backbone.arch == 'tiny' and cfg.model.backbone.init_cfg is None  # random init
    assert [h.type for h in cfg.model.roi_head.bbox_head] == [h.type for h in original.model.roi_head.bbox_head]
    assert {h.num_classes for h in cfg.model.roi_head.bbox_head} == {cfg.model.roi_head.mask_head.num_classes} \
        == {len(CLASSES)}
    assert [s.sampler.num for s in cfg.model.train_cfg.rcnn] == [DET['rcnn_rois']] * 3
    assert cfg.optim_wrapper.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert cfg.val_evaluator.type == cfg.test_evaluator.type == 'CocoMetric'
    assert cfg.work_dir.endswith('convnext_t_3x_demo')
    assert osp.isfile(demo_cwd / 'data' / 'demo' / 'coco' / 'annotations' / 'instances_train.json')
    check_datasets(cfg, ('train', 'val', 'test'))


def test_segmentation_demo_keeps_the_model_pipelines_optimizer_and_metric(demo_cwd, monkeypatch):
    monkeypatch.chdir(demo_cwd)
    cfg = demo_config(load_config(UPERNET_T))
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.backbone.init_cfg is None
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == len(SEG_CLASSES)
    assert cfg.optim_wrapper.paramwise_cfg.decay_type == 'stage_wise'
    assert cfg.val_evaluator.type == 'IoUMetric'
    assert cfg.train_cfg.max_iters == SEG['max_iters']
    check_datasets(cfg, ('train', 'val', 'test'))


@pytest.mark.parametrize('config', [CASCADE_T, UPERNET_T])
def test_one_training_step_on_the_demo_data(config, demo_cwd, monkeypatch, tmp_path, one_thread):
    monkeypatch.chdir(demo_cwd)
    cfg = demo_config(load_config(config))
    fit_config_to_machine(cfg, distributed=False)
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.model.train()
    gradients = record_gradients_on_every_path(runner.model.backbone)
    losses = runner.model.train_step(next(iter(runner.train_dataloader)), runner.optim_wrapper)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert_every_path_got_a_gradient(gradients)


def test_data_root_option_puts_the_demo_data_there(demo_cwd, tmp_path, monkeypatch):
    import argparse

    from convnext_mm.demo_data import MARKER
    from convnext_mm.runtime import config_from_command_line
    monkeypatch.chdir(demo_cwd)
    elsewhere = tmp_path / 'elsewhere' / 'ade'
    args = argparse.Namespace(config=UPERNET_T, demo=True, launcher='none', work_dir=None,
                              cfg_options={'data_root': str(elsewhere), 'train_cfg.max_iters': 7})
    cfg = config_from_command_line(args)
    assert (elsewhere / MARKER).is_file()  # generated there
    assert cfg.train_cfg.max_iters == 7  # the other options still apply
    for split in ('train', 'val', 'test'):
        assert cfg[f'{split}_dataloader'].dataset.data_root == str(elsewhere)
    check_datasets(cfg, ('train', 'val', 'test'))


def test_demo_data_never_replaces_a_folder_of_other_files(tmp_path):
    real = tmp_path / 'coco'
    (real / 'annotations').mkdir(parents=True)
    (real / 'annotations' / 'instances_train2017.json').write_text('{}')
    with pytest.raises(ValueError, match=r"coco' holds files but no demo data .* give a new or empty folder"):
        demo_config(load_config(CASCADE_T), data_root=str(real))
    assert (real / 'annotations' / 'instances_train2017.json').read_text() == '{}'
