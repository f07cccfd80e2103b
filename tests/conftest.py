"""Fixtures shared by the test modules. The helpers they build on are plain modules beside this one:
project.py (the repository's paths and tools), tiny_models.py (backbone sizes, shrunk configs, batches),
tiny_data.py (tiny COCO and ADE20K sets on disk), checkpoint_layouts.py (the public weight layouts),
layer_decay_tables.py (the official lr-scale tables) and metrics_recomputed.py (metrics counted without the
host libraries' evaluators)."""
import pytest
import torch

from tiny_data import write_coco


@pytest.fixture
def one_thread():
    """Train in-process on one thread: tiny models gain nothing from two, and OpenMP threads spin badly on a
    machine busy with other work (a step can take ten times longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    """A COCO-format set (train2017, val2017) of four 64x64 images, COCO's 80 classes."""
    return write_coco(str(tmp_path_factory.mktemp('coco')))
