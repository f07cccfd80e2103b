"""The metrics recomputed from saved predictions without mmdet's or mmseg's evaluators, as known values to
compare the tools' figures with: pycocotools' COCOeval on a .pkl of dumped detections, and IoU counted with
numpy on the label maps that a segmentation test writes."""
import contextlib
import io
import pickle

import numpy as np


def coco_metrics(predictions_pkl, ann_file, classes):
    """{'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'} of the detections in
    ``predictions_pkl`` (mmdet's DumpDetResults: boxes x1y1x2y2, labels indexing ``classes``, masks as RLE),
    rounded to 3 digits as mmdet logs them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with open(predictions_pkl, 'rb') as f:
        predictions = pickle.load(f)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
    category_of = {category['name']: category['id'] for category in gt.dataset['categories']}
    boxes, masks = [], []
    for prediction in predictions:
        instances = prediction['pred_instances']
        for i, ((x1, y1, x2, y2), score, label) in enumerate(zip(instances['bboxes'].tolist(),
                                                                 instances['scores'].tolist(),
                                                                 instances['labels'].tolist())):
            box = dict(image_id=prediction['img_id'], category_id=category_of[classes[label]],
                       bbox=[x1, y1, x2 - x1, y2 - y1], score=score)
            boxes.append(box)
            masks.append(dict(box, segmentation=instances['masks'][i]))
    metrics = {}
    for kind, results in (('bbox', boxes), ('segm', masks)):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(gt, gt.loadRes(results), kind)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        metrics[f'coco/{kind}_mAP'] = round(evaluation.stats[0], 3)
        metrics[f'coco/{kind}_mAP_50'] = round(evaluation.stats[1], 3)
    return metrics


def segmentation_metrics(pairs, num_classes=150):
    """{'aAcc', 'mIoU'} in percent (rounded to 2 digits, as mmseg's IoUMetric logs them) of (predicted, ground
    truth) label maps in the same numbering, 0 ignored and 1..``num_classes`` the classes (ADE20K's files, and
    mmseg's saved predictions with reduce_zero_label). mIoU: the mean over the classes found in either."""
    intersection = np.zeros(num_classes + 1)
    union = np.zeros(num_classes + 1)
    labelled = correct = 0
    for predicted, truth in pairs:
        keep = truth != 0
        predicted, truth = predicted[keep], truth[keep]
        for label in np.union1d(predicted, truth):
            intersection[label] += np.sum((predicted == label) & (truth == label))
            union[label] += np.sum((predicted == label) | (truth == label))
        labelled += truth.size
        correct += np.sum(predicted == truth)
    present = union > 0
    return dict(aAcc=round(100 * correct / labelled, 2),
                mIoU=round(100 * np.mean(intersection[present] / union[present]), 2))
