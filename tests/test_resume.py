"""Resume: a training run killed with SIGKILL after a checkpoint, resumed with ``--resume`` (from the work dir's
last checkpoint, or from a given one), ends at the same iteration with the same weights, optimizer and scheduler
state as a run never interrupted: with what the configs declare (SafeCheckpointHook, RandomStateHook, the
checkpoint hook's ``atomic_local`` backend), under mmdet's own tools/train.py as under ours.

Both loop kinds, shrunk (atto backbone, tiny images, a few iterations, the demo data): the detection demo's Cascade
Mask R-CNN under mmdet's own tools/train.py (epoch-based; killed in the middle of an epoch) and the paper's UperNet
under tools/train.py (iteration-based; killed while a checkpoint is being written, which must leave no file under
the checkpoint's name). Random draws happen all
along (drop path, RoI sampling, random flips and crops, dropout) and validation runs in between, so equality
also checks that the random state is carried over.
"""
import copy
import glob
import os
import os.path as osp
import pickle
import re
import signal
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from convnext_mm.demo_data import CLASSES, SEG_CLASSES, make_ade, make_coco
from convnext_mm.resume import RandomStateHook, SafeCheckpointHook, get_random_state
from project import ROOT, TESTS, UPERNET_T, config_path, host_tool
from tiny_models import read_coco_data, shrink_cascade, shrink_upernet


def tiny_cascade(data_root):
    """The detection demo's config shrunk, its data at ``data_root`` (so no DemoDataHook): 3 epochs of 2
    iterations, a checkpoint after each, validation after 2, 3."""
    cfg = shrink_cascade(Config.fromfile(config_path('demo/cascade_convnext_t_demo.py')), len(CLASSES))
    cfg.custom_hooks = [hook for hook in cfg.custom_hooks if hook.type != 'DemoDataHook']
    read_coco_data(cfg, data_root, CLASSES, (96, 96))
    cfg.train_cfg.update(max_epochs=3, val_interval=2)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
        dict(type='MultiStepLR', begin=0, end=3, by_epoch=True, milestones=[2], gamma=0.1)]
    return cfg


def tiny_upernet(data_root):
    """UperNet ConvNeXt config shrunk: 6 iterations, a checkpoint and a validation every 2."""
    cfg = shrink_upernet(Config.fromfile(UPERNET_T), len(SEG_CLASSES))
    pipelines = dict(
        train=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
               dict(type='RandomCrop', crop_size=(64, 64), cat_max_ratio=0.75),
               dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')],
        val=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
             dict(type='PackSegInputs')])
    for split, folder in (('train', 'training'), ('val', 'validation')):
        loader = cfg[f'{split}_dataloader']
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.update(
            type='BaseSegDataset', data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png',
            reduce_zero_label=True, metainfo=dict(classes=SEG_CLASSES), pipeline=pipelines[split],
            data_prefix=dict(img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'))
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_cfg.update(max_iters=6, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
        dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=3, end=6)]
    return cfg


def write_config(cfg, path, sigkill=None):
    """Deterministic settings, logging every iteration; ``sigkill``: SigkillHook args.

    The config's RandomStateHook (configs/_base_) puts the random generators' state into each checkpoint.
    """
    cfg = copy.deepcopy(cfg)
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.default_hooks.logger.interval = 1
    if sigkill:
        cfg.custom_imports = dict(imports=['convnext_mm', 'sigkill_hook'], allow_failed_imports=False)
        cfg.custom_hooks = [*cfg.custom_hooks, dict(type='SigkillHook', **sigkill)]
    cfg.dump(path)
    return path


def tool(path, *args):
    # One thread: these models are tiny.
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([TESTS, os.environ.get('PYTHONPATH', '')]))
    return subprocess.run([sys.executable, path, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


OURS = osp.join(ROOT, 'tools', 'train.py')
MMDET_OWN = host_tool('mmdet', 'train')


def train(config, work_dir, *args, tool_path=OURS):
    return tool(tool_path, config, '--work-dir', work_dir, *args)


def differences(expected, actual, where=''):
    """Where two nested checkpoint structures differ (tensors compared exactly)."""
    if torch.is_tensor(expected):
        return [] if torch.is_tensor(actual) and torch.equal(expected, actual) else [where]
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or expected.keys() != actual.keys():
            return [where]
        return [d for k in expected for d in differences(expected[k], actual[k], f'{where}.{k}')]
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(expected) != len(actual):
            return [where]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f'{where}[{i}]')]
    return [] if expected == actual else [where]


def assert_same_state(expected_path, actual_path):
    expected, actual = torch.load(expected_path), torch.load(actual_path)
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        different = differences(expected[key], actual[key], key)
        assert not different, f'{len(different)} entries differ, e.g. {different[:3]}'
    assert (actual['meta']['epoch'], actual['meta']['iter']) == (expected['meta']['epoch'], expected['meta']['iter'])


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    make_coco(str(root / 'coco'), {'train': 4, 'val': 2}, image_size=((96, 96), (96, 96)))
    make_ade(str(root / 'ade'), {'training': 4, 'validation': 2}, image_size=((80, 80), (80, 80)))
    return root


def train_uninterrupted_and_killed(cfg, tmp_path, sigkill, tool_path=OURS):
    """``cfg`` trained to the end (work dir tmp_path/reference) and killed by a SigkillHook(**sigkill) (work dir
    tmp_path/killed) by the training tool at ``tool_path``; returns the plain config file and the killed run's
    work dir."""
    plain = write_config(cfg, str(tmp_path / 'config.py'))
    reference = train(plain, str(tmp_path / 'reference'), tool_path=tool_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    work_dir = str(tmp_path / 'killed')
    killed = train(write_config(cfg, str(tmp_path / 'config_killed.py'), sigkill), work_dir, tool_path=tool_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    return plain, work_dir


def test_mmdets_own_train_tool_killed_in_the_middle_of_an_epoch_then_resumes(data, tmp_path):
    plain, work_dir = train_uninterrupted_and_killed(tiny_cascade(str(data / 'coco')), tmp_path, dict(after_iter=5),
                                                     tool_path=MMDET_OWN)
    assert sorted(map(osp.basename, glob.glob(osp.join(work_dir, '*.pth')))) == ['epoch_1.pth', 'epoch_2.pth']
    # torch's safe loader (weights_only=True, its default) reads the checkpoints as they are.
    torch.load(osp.join(work_dir, 'epoch_2.pth'), weights_only=True)

    # --resume PATH: from the checkpoint given, not the latest (epoch 2's), and still to the uninterrupted state.
    resumed = train(plain, work_dir, '--resume', osp.join(work_dir, 'epoch_1.pth'), tool_path=MMDET_OWN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch: 1, iter: 2' in resumed.stdout + resumed.stderr
    log = resumed.stdout + resumed.stderr  # what the config declares, the log says
    assert 'SafeCheckpointHook: checkpoints hold plain data' in log and 'written atomically' in log
    assert "RandomStateHook: checkpoints carry the random generators' state" in log
    assert_same_state(osp.join(tmp_path, 'reference', 'epoch_3.pth'), osp.join(work_dir, 'epoch_3.pth'))
    assert torch.load(osp.join(work_dir, 'epoch_3.pth'))['meta']['iter'] == 6


def test_sigkill_while_writing_a_checkpoint_leaves_no_checkpoint_file_then_resume(data, tmp_path):
    plain, work_dir = train_uninterrupted_and_killed(tiny_upernet(str(data / 'ade')), tmp_path,
                                                     dict(during_save_at_iter=4))
    # The interrupted write left its bytes in a temporary file only; the last complete checkpoint stands.
    assert sorted(map(osp.basename, glob.glob(osp.join(work_dir, '*.pth')))) == ['iter_2.pth']
    assert glob.glob(osp.join(work_dir, '.iter_4.pth.*.tmp'))
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('iter_2.pth')

    resumed = train(plain, work_dir, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 2' in resumed.stdout + resumed.stderr
    assert_same_state(osp.join(tmp_path, 'reference', 'iter_6.pth'), osp.join(work_dir, 'iter_6.pth'))

    # tools/test.py on the last checkpoint reproduces the metrics of the validation at the end of training.
    tested = tool(osp.join(ROOT, 'tools', 'test.py'), plain, osp.join(work_dir, 'iter_6.pth'), '--work-dir',
                  str(tmp_path / 'test'))
    assert tested.returncode == 0, tested.stderr[-3000:]
    last_val = re.findall(r'Iter\(val\) \[2/2\]\s+(aAcc: .*mAcc: [0-9.]+)', resumed.stdout + resumed.stderr)[-1]
    test = re.findall(r'Iter\(test\) \[2/2\]\s+(aAcc: .*mAcc: [0-9.]+)', tested.stdout + tested.stderr)[-1]
    assert test == last_val and 'mIoU: ' in test


def test_checkpoints_hold_plain_data_that_torchs_safe_loader_reads(tmp_path):
    """What the configs' hooks put into a checkpoint (the message hub's logged values, the random state) loads with
    torch.load(weights_only=True) and no allow-list; after_load_checkpoint gives mmengine its HistoryBuffers back,
    with the same values, and RandomStateHook's state sets every generator back exactly."""
    import random

    import numpy as np
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub.get_instance('test_resume')
    for value in (1.5, 0.25, 3.0):
        hub.update_scalar('train/loss', value)
    hub.update_info('dataset_meta', dict(classes=CLASSES))
    hub.update_info('eta', np.float64(12.5))  # as mmengine's logger leaves it
    checkpoint = dict(meta=dict(epoch=1, iter=2, seed=0), message_hub=hub.state_dict(), state_dict={'w': torch.ones(2)})
    runner = None  # the hooks read nothing of it on save and load
    SafeCheckpointHook().before_save_checkpoint(runner, checkpoint)
    RandomStateHook().before_save_checkpoint(runner, checkpoint)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(checkpoint, tmp_path / 'ok.pth')
    loaded = torch.load(tmp_path / 'ok.pth', weights_only=True)
    SafeCheckpointHook().after_load_checkpoint(runner, loaded)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.current() == 3.0 and buffer.mean() == pytest.approx(1.5833333)
    assert [list(a) for a in buffer.data] == [list(a) for a in hub.get_scalar('train/loss').data]
    assert loaded['message_hub']['runtime_info']['eta'] == 12.5
    from convnext_mm.resume import set_random_state
    set_random_state(loaded['random_state'])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1]) and again[2] == expected[2]


class NotAllowed:
    """A class no allow-list names: a checkpoint holding one must still be refused."""


def test_objects_no_allow_list_names_are_still_refused(tmp_path):
    """Nothing was added to torch's safe globals: a checkpoint holding another object is refused as before."""
    torch.save(dict(meta=NotAllowed(), random_state=get_random_state()), tmp_path / 'bad.pth')
    with pytest.raises(pickle.UnpicklingError, match='NotAllowed'):
        torch.load(tmp_path / 'bad.pth')
