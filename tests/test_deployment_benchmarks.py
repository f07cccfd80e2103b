"""The deployment benchmarks' own computation: UperNet's sliding window, which the exported file runs window by
window in numpy, must label an image as mmseg's ``slide_inference`` does."""
import torch
from mmengine.config import Config

from project import UPERNET_T  # first: it puts benchmarks/ on the path
from benchmark_deployed_segmentor import slide_labels, slide_windows
from tiny_models import build_model, randomize_whole_model, shrink_upernet

CROP, STRIDE = (64, 64), (43, 43)


def test_the_windows_cover_the_image_as_mmsegs_grid():
    # (96 - 64 + 42) // 43 + 1 = 2 rows, (200 - 64 + 42) // 43 + 1 = 5 columns; the last ones moved back inside.
    windows = slide_windows(96, 200, CROP, STRIDE)
    assert [w[:2] for w in windows] == [(top, left) for top in (0, 32) for left in (0, 43, 86, 129, 136)]
    assert all((bottom - top, right - left) == CROP for top, left, bottom, right in windows)


def test_the_numpy_sliding_window_labels_as_mmsegs_slide_inference():
    cfg = shrink_upernet(Config.fromfile(UPERNET_T), num_classes=4)
    cfg.default_scope = 'mmseg'
    cfg.model.test_cfg = dict(mode='slide', crop_size=CROP, stride=STRIDE)
    torch.manual_seed(0)
    model = randomize_whole_model(build_model(cfg)).eval()
    from mmseg.structures import SegDataSample
    image = torch.randn(1, 3, 96, 200, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.predict(image, [SegDataSample(metainfo=dict(img_shape=(96, 200), ori_shape=(96, 200)))])
        found = slide_labels(lambda window: model.encode_decode(torch.from_numpy(window), [
            dict(img_shape=window.shape[2:])]).numpy(), image.numpy(), CROP, STRIDE)
    expected = expected[0].pred_sem_seg.data[0].numpy()
    assert len(set(expected.flatten().tolist())) > 1  # a label map with something to get wrong
    assert (found == expected).all()
