"""How far a deployed detector's predictions are from PyTorch's: two folders of ``preds/STEM.json`` files, one
written by tools/deploy_infer.py (ONNX Runtime or OpenVINO), one by tools/infer.py (mmdet), image by image.

    python benchmarks/deployment_parity.py DEPLOYED_DIR REFERENCE_DIR [--min-box-iou 0.98]

Both runs should use the same ``--score-thr``. Each deployed detection is paired with the reference detection of
its label with the highest box IoU (at least --min-box-iou), by descending score (tools/export_onnx.py's own
check); the script prints how many were paired, the worst box IoU, score difference and mask IoU over the
pairs, and each unpaired detection with its score, so that one on the score threshold can be told from a real
difference.
"""
import argparse
import glob
import json
import os.path as osp
import sys

import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools'))
from export_onnx import box_iou, match_detections  # noqa: E402


def read_predictions(path):
    """(boxes, scores, labels, masks) of one preds/STEM.json."""
    with open(path) as stream:
        prediction = json.load(stream)
    masks = [mask_utils.decode(dict(size=m['size'], counts=m['counts'].encode())).astype(bool)
             for m in prediction['masks']]
    return (np.array(prediction['bboxes'], np.float64).reshape(-1, 4), np.array(prediction['scores']),
            np.array(prediction['labels']), masks)


def compare(deployed_dir, reference_dir, min_box_iou=0.98):
    """Per image (pairs, deployed, reference) and the summary dict."""
    stems = sorted(osp.relpath(p, osp.join(reference_dir, 'preds'))[:-len('.json')]
                   for p in glob.glob(osp.join(reference_dir, 'preds', '**', '*.json'), recursive=True))
    if not stems:
        raise SystemExit(f'error: {reference_dir} has no preds/*.json: give the --out-dir of tools/infer.py')
    summary = dict(images=len(stems), deployed=0, reference=0, paired=0, worst_box_iou=1.0, worst_score=0.0,
                   worst_mask_iou=1.0, unpaired=[])
    for stem in stems:
        deployed_file = osp.join(deployed_dir, 'preds', stem + '.json')
        if not osp.isfile(deployed_file):
            raise SystemExit(f'error: {deployed_file} is missing: run tools/deploy_infer.py on the same inputs')
        found, reference = read_predictions(deployed_file), read_predictions(osp.join(reference_dir, 'preds',
                                                                                       stem + '.json'))
        pairs = match_detections(found, reference, min_box_iou)
        summary['deployed'] += len(found[1])
        summary['reference'] += len(reference[1])
        summary['paired'] += len(pairs)
        for i, j in pairs:
            summary['worst_box_iou'] = min(summary['worst_box_iou'], float(box_iou(found[0][i:i + 1],
                                                                                   reference[0][j:j + 1])[0, 0]))
            summary['worst_score'] = max(summary['worst_score'], abs(float(found[1][i] - reference[1][j])))
            union = np.logical_or(found[3][i], reference[3][j]).sum()
            summary['worst_mask_iou'] = min(summary['worst_mask_iou'],
                                            float(np.logical_and(found[3][i], reference[3][j]).sum() / max(union, 1)))
        paired_found, paired_reference = {i for i, _ in pairs}, {j for _, j in pairs}
        summary['unpaired'] += [(stem, 'deployed', int(found[2][i]), float(found[1][i]))
                                for i in range(len(found[1])) if i not in paired_found]
        summary['unpaired'] += [(stem, 'reference', int(reference[2][j]), float(reference[1][j]))
                                for j in range(len(reference[1])) if j not in paired_reference]
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description="Compare tools/deploy_infer.py's predictions with tools/infer.py's")
    parser.add_argument('deployed_dir', help='the --out-dir of tools/deploy_infer.py')
    parser.add_argument('reference_dir', help='the --out-dir of tools/infer.py on the same inputs')
    parser.add_argument('--min-box-iou', type=float, default=0.98, help='box IoU that pairs two detections')
    args = parser.parse_args(argv)
    s = compare(args.deployed_dir, args.reference_dir, args.min_box_iou)
    total = max(s['deployed'], s['reference'])
    print(f"{s['images']} images: {s['deployed']} deployed and {s['reference']} reference detections, "
          f"{s['paired']} paired ({s['paired'] / max(total, 1):.1%}); over the pairs: worst box IoU "
          f"{s['worst_box_iou']:.4f}, largest score difference {s['worst_score']:.1e}, worst mask IoU "
          f"{s['worst_mask_iou']:.4f}")
    for stem, side, label, score in s['unpaired']:
        print(f'  unpaired: {stem}: {side} detection of label {label}, score {score:.4f}')
    return s


if __name__ == '__main__':
    main()
