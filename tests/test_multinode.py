"""Training beyond one machine, on one machine: two torchrun launches of tools/dist_train.sh as two "nodes"
(NNODES=2, NODE_RANK 0 and 1, rendezvous on 127.0.0.1, one process each, gloo on the CPU) train the demo's
Cascade Mask R-CNN ConvNeXt config shrunk (atto backbone, 64-pixel demo images, 2 iterations per epoch).

When node 1's training process is killed (SIGKILL) in the second epoch, node 0's process must end with an
error that says what happened, within seconds, not hang in its next collective; ``--resume`` on both nodes then
continues from the last complete checkpoint (epoch 1) to the end. A dead process closes its connections, which
is what ends the other at once; a peer that is alive but silent (a frozen process, a lost node) is noticed only
at the collective timeout, the config's ``env_cfg.dist_cfg.timeout``: the second test, where tools/train.py
runs beside a bare process that joins the group and goes silent.
"""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch
from mmengine.config import Config

from convnext_mm.demo_data import CLASSES, make_coco
from project import CASCADE_T, ROOT, TESTS, free_port
from tiny_models import read_coco_data, shrink_cascade
# The longest a launch of the two nodes may take (about 15 s, starting included, on 2 busy cores).
NODE_TIMEOUT = 240
# The longest the surviving node may take to end once its peer is dead (about 2 s; without an end, gloo's
# default timeout, 30 minutes).
SURVIVOR_TIMEOUT = 60


def tiny_cascade(data_root, path, sigkill=None):
    """The cascade config shrunk, 2 epochs of 2 iterations (4 images over 2 processes) and a checkpoint after
    each, no validation; ``sigkill``: SigkillHook args (tests/sigkill_hook.py)."""
    cfg = shrink_cascade(Config.fromfile(CASCADE_T), len(CLASSES))
    read_coco_data(cfg, data_root, CLASSES, (64, 64), batch_size=1)
    cfg.train_cfg.update(max_epochs=2, val_begin=3)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = dict(seed=0)
    if sigkill:
        cfg.custom_imports = dict(imports=['convnext_mm', 'sigkill_hook'], allow_failed_imports=False)
        cfg.custom_hooks = [*cfg.custom_hooks, dict(type='SigkillHook', **sigkill)]
    cfg.dump(path)
    return path


class Node:
    """One "node": ``tools/dist_train.sh CONFIG 1`` with NNODES=2 and this NODE_RANK, in its own process group
    (torchrun and its worker) so that a failed test can end both; its output goes to a file."""

    def __init__(self, rank, port, config, work_dir, log_dir, *args):
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = osp.join(log_dir, f'node{rank}.log')
        env = dict(os.environ, NNODES='2', NODE_RANK=str(rank), PORT=str(port), MASTER_ADDR='127.0.0.1',
                   OMP_NUM_THREADS='1', PATH=osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''),
                   PYTHONPATH=os.pathsep.join([TESTS, os.environ.get('PYTHONPATH', '')]))
        with open(self.log_path, 'w') as log:
            self.process = subprocess.Popen(
                ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), config, '1', '--work-dir', work_dir, *args],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout):
        """The exit status, or None if the node was still running after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def nodes():
    """Starts nodes; whatever is still running at the end of the test is killed."""
    started = []

    def start(*args):
        started.extend(Node(rank, *args) for rank in (0, 1))
        return started[-2:]

    yield start
    for node in started:
        node.kill()


def tail(node_pair):
    return '\n'.join(f'--- node {rank} ---\n' + node.log()[-3000:] for rank, node in enumerate(node_pair))


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    """The demo's COCO-format data, 4 training images of 64 x 64 pixels (2 per process) and 1 for validation."""
    data = str(tmp_path_factory.mktemp('data') / 'coco')
    make_coco(data, {'train': 4, 'val': 1}, image_size=((64, 64), (64, 64)))
    return data


def test_two_nodes_train_a_dead_node_ends_the_other_and_resume_continues(coco, nodes, tmp_path):
    work_dir = str(tmp_path / 'work')

    # Node 1's process dies after iteration 3: epoch 1 is saved, epoch 2 half done.
    killing = tiny_cascade(coco, str(tmp_path / 'killing.py'), dict(after_iter=3, rank=1))
    run = nodes(free_port(), killing, work_dir, str(tmp_path / 'killed'))
    node0, node1 = run
    assert node1.wait(NODE_TIMEOUT) is not None, tail(run)
    died = time.monotonic()
    # Node 0 waits for node 1's gradients in its 4th iteration: the closed connection ends it at once.
    status = node0.wait(SURVIVOR_TIMEOUT)
    ended_after = time.monotonic() - died
    assert status is not None, f'node 0 still running {SURVIVOR_TIMEOUT} s after node 1 died\n' + tail(run)
    print(f'node 0 ended {ended_after:.1f} s after node 1, exit status {status}')
    assert status == 1 and node1.process.returncode != 0, tail(run)
    assert 'Signal 9 (SIGKILL)' in node1.log(), tail(run)
    log0 = node0.log()
    assert 'Epoch(train) [2][1/2]' in log0 and 'Epoch(train) [2][2/2]' not in log0, tail(run)
    assert 'error: lost contact with another process of this distributed run' in log0, tail(run)
    assert '--resume on every node' in log0, tail(run)  # gloo's own words vary: connection closed, reset
    assert sorted(f for f in os.listdir(work_dir) if f.endswith('.pth')) == ['epoch_1.pth']

    # Both nodes again, with --resume: from epoch 1, the last complete checkpoint, to the end.
    plain = tiny_cascade(coco, str(tmp_path / 'plain.py'))
    run = nodes(free_port(), plain, work_dir, str(tmp_path / 'resumed'), '--resume')
    assert [node.wait(NODE_TIMEOUT) for node in run] == [0, 0], tail(run)
    log0 = run[0].log()
    assert 'resumed epoch: 1, iter: 2' in log0 and 'Distributed training: True' in log0, tail(run)
    assert 'Epoch(train) [2][2/2]' in log0 and 'Epoch(train) [1]' not in log0, tail(run)
    checkpoint = torch.load(osp.join(work_dir, 'epoch_2.pth'))
    assert (checkpoint['meta']['epoch'], checkpoint['meta']['iter']) == (2, 4)


# Rank 1 of a run of two: joins the process group, then stays alive and silent, its connections open.
FROZEN_PEER = """
import time
import torch.distributed as dist
dist.init_process_group('gloo')
time.sleep(600)
"""


def test_a_frozen_peer_ends_the_run_at_the_configured_timeout(coco, tmp_path):
    """A node that stops answering without closing its connections (frozen, or its machine gone) is noticed only
    at the collective timeout: the config's env_cfg.dist_cfg.timeout, not gloo's default 30 minutes."""
    env = dict(os.environ, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), WORLD_SIZE='2', LOCAL_RANK='0',
               OMP_NUM_THREADS='1')
    config = tiny_cascade(coco, str(tmp_path / 'tiny.py'))
    train = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--launcher', 'pytorch', '--work-dir',
             str(tmp_path / 'work'), '--cfg-options', 'env_cfg.dist_cfg.timeout=5']
    ranks = [subprocess.Popen(command, cwd=ROOT, env=dict(env, RANK=str(rank)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for rank, command in enumerate([train, [sys.executable, '-c', FROZEN_PEER]])]
    try:
        output, _ = ranks[0].communicate(timeout=NODE_TIMEOUT)
    finally:
        for process in ranks:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert ranks[0].returncode == 1, output[-3000:]
    assert 'error: lost contact with another process of this distributed run' in output, output[-3000:]
    assert 'Timed out waiting 5000ms' in output, output[-3000:]
