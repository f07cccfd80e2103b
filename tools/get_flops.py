"""Parameters and FLOPs of ConvNeXt detectors and segmentors at the paper's input sizes, beside the paper's numbers.

    python tools/get_flops.py CONFIG [CONFIG ...] [--shape HEIGHT WIDTH] [--cfg-options KEY=VALUE ...]

Counted with mmengine's ``get_model_complexity_info`` (one multiply-add = one FLOP, as the paper), on what the
paper counted (its code measured mmdet 2.x's ``forward_dummy`` and mmseg 0.x's ``encode_decode``):
- detectors, 1280x800 input: backbone, neck, the RPN head's convolutions, every box-head stage on 1000 proposals
  and every mask-head stage on 100 of them (no NMS or other post-processing);
- segmentors, the config's test resize (2048x512 with 512 crops, 2560x640 with 640 crops, as the paper):
  backbone and decode head (not the auxiliary head, which only trains).
Parameters are those of the whole model, auxiliary head included. Like the paper's counter, mmengine's counts
convolutions and matrix products; norms, activations, pooling and resizing are left out (mmengine's warnings
about such "unsupported operators" are silenced here).
"""
import argparse
import logging
import os.path as osp
import re

import torch
from mmengine.analysis import get_model_complexity_info
from mmengine.config import DictAction
from mmengine.logging import MMLogger
from torch import nn

from config_utils import build_model, load_config, paper_input_size

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS_DIR = osp.join(ROOT, 'configs')
# The paper's Tables 3 and 4, as docs/results.md gives them: a row linking a config, with its params and FLOPs.
RESULTS = osp.join(ROOT, 'docs', 'results.md')


def read_paper_table(path=RESULTS):
    """config path under configs/ -> the paper's parameters (M) and GFLOPs as written ('48', '262'): the ``params``
    and ``FLOPs`` cells of each row of docs/results.md whose first cell links the config."""
    table, header = {}, None
    with open(path, encoding='utf-8') as f:
        for line in f:
            cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
            if not line.startswith('|'):
                header = None
            elif header is None:
                header = cells
            elif {'params', 'FLOPs'} <= set(header):
                link = re.search(r'\]\(\.\./configs/([^)]+)\)', cells[0])
                if link:
                    table[link.group(1)] = (cells[header.index('params')].rstrip('M'),
                                            cells[header.index('FLOPs')].rstrip('G'))
    return table


class DetectorFlopsForward(nn.Module):
    """A two-stage detector's forward as the paper counted it (mmdet 2.x's ``forward_dummy``)."""

    NUM_PROPOSALS = 1000
    NUM_MASK_ROIS = 100

    def __init__(self, detector, image_size):
        super().__init__()
        if not (hasattr(detector, 'rpn_head') and hasattr(detector, 'roi_head')):
            raise SystemExit(f'error: get_flops counts two-stage detectors (rpn_head and roi_head); '
                             f'{type(detector).__name__} has not both')
        from mmdet.structures.bbox import bbox2roi
        self.detector = detector
        # Fixed proposals inside the image: only their number matters for the count.
        generator = torch.Generator().manual_seed(0)
        height, width = image_size
        corner = torch.rand(self.NUM_PROPOSALS, 2, generator=generator) * torch.tensor([width, height]) * 0.8
        extent = torch.rand(self.NUM_PROPOSALS, 2, generator=generator) * torch.tensor([width, height]) * 0.2 + 1
        self.register_buffer('rois', bbox2roi([torch.cat([corner, corner + extent], dim=1)]), persistent=False)

    def forward(self, image):
        features = self.detector.extract_feat(image)
        cls_scores, bbox_preds = self.detector.rpn_head(features)
        outputs = [*cls_scores, *bbox_preds]
        roi_head = self.detector.roi_head
        # Cascade heads take the stage index first; a single-stage RoI head has none.
        stages = [(stage, ) for stage in range(roi_head.num_stages)] if hasattr(roi_head, 'num_stages') else [()]
        for stage in stages:
            bbox_results = roi_head._bbox_forward(*stage, features, self.rois)
            outputs += [bbox_results['cls_score'], bbox_results['bbox_pred']]
        if roi_head.with_mask:
            for stage in stages:
                outputs.append(roi_head._mask_forward(*stage, features, self.rois[:self.NUM_MASK_ROIS])['mask_preds'])
        return tuple(outputs)


class SegmentorFlopsForward(nn.Module):
    """Backbone and decode head of an encoder-decoder segmentor."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image):
        return self.segmentor.decode_head(self.segmentor.extract_feat(image))


def count(cfg, image_size):
    """(parameters, FLOPs) of the config's model on one image of ``image_size`` (height, width)."""
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    if cfg.default_scope == 'mmdet':
        counted = DetectorFlopsForward(model, image_size)
    else:
        counted = SegmentorFlopsForward(model)
    image = torch.randn(1, 3, *image_size)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            flops = get_model_complexity_info(counted, inputs=(image, ), show_table=False, show_arch=False)['flops']
    finally:
        logger.setLevel(level)
    return params, flops


def paper_numbers(config_path):
    relative = osp.relpath(osp.abspath(config_path), CONFIGS_DIR).replace(osp.sep, '/')
    return read_paper_table().get(relative, (None, None))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of detectors and segmentors')
    parser.add_argument('configs', nargs='+', metavar='CONFIG', help='config file(s)')
    parser.add_argument(
        '--shape', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'),
        help='input size (default: the paper\'s, 800 1280 for detection, 512 2048 or 640 2560 for segmentation)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the configs')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    header = f'{"config":<52} {"input":>9} {"params (M)":>10} {"paper":>6} {"GFLOPs":>8} {"paper":>6}'
    print(header)
    print('-' * len(header))
    for path in args.configs:
        cfg = load_config(path, args.cfg_options)
        image_size = tuple(args.shape) if args.shape else paper_input_size(cfg)
        params, flops = count(cfg, image_size)
        paper_params, paper_gflops = paper_numbers(path)
        if image_size != paper_input_size(cfg):
            paper_gflops = None  # the paper's FLOPs are for its input size only
        print(f'{path:<52} {image_size[1]:>4}x{image_size[0]:<4} {params / 1e6:>10.1f} '
              f'{paper_params if paper_params else "-":>6} {flops / 1e9:>8.1f} '
              f'{paper_gflops if paper_gflops else "-":>6}', flush=True)


if __name__ == '__main__':
    main()
