"""A two-stage detector from image to boxes, scores, labels and masks as one module that torch's ONNX exporter
takes whole: Mask R-CNN or Cascade Mask R-CNN, computed as mmdet 3.3's ``predict(rescale=True)`` computes it.

It reuses every learned layer of the mmdet model (backbone, neck, the RPN head's convolutions, the box and mask
heads' ``forward``) and rewrites what mmdet does around them without Python branches on data, so that one graph
serves every image size and every number of detections:

    image -> backbone -> FPN -> RPN head -> per-level top-k, decode, clip, per-level NMS -> proposals
          -> RoIAlign on each RoI's FPN level -> box head (cascade: three stages, refined by the argmax class's
             box between stages, logits averaged) -> softmax, class-specific decode, score threshold,
             class-wise NMS -> detections
          -> mask heads on the detections (cascade: sigmoid probabilities averaged) -> the label's channel
             pasted on the original image -> masks

mmdet's own code cannot be exported as it is: it branches on counts (``if rois.shape[0] == 0``), and under
export ``torch.onnx.is_in_onnx_export()`` sends its box decoding to a removed mmdet 2.x module and makes
``multiclass_nms`` skip the score threshold. So the steps are written here, each beside the mmdet function it
follows, with the same floating-point operations in the same order.

The two ops without a torch equivalent are custom ops whose eager implementation is mmcv's kernel (the one
mmdet runs) and whose ONNX translation is a standard op: ``nms`` -> ``NonMaxSuppression``, ``roi_align`` ->
``RoiAlign`` (opset 16, ``half_pixel``: mmcv's ``aligned=True``; mmcv's own opset-11 emulation is off by up to ~2
on RoIs smaller than a feature pixel). They are registered when this module is imported (by
tools/export_onnx.py), never by ``import convnext_mm``.
"""
import math

import torch
import torch.nn as nn
from mmcv.ops import nms as mmcv_nms
from mmcv.ops import roi_align as mmcv_roi_align
from onnxscript import INT64
from onnxscript import opset18 as op
from torch import Tensor

# A RoI (batch index, x1, y1, x2, y2) of one feature pixel: what a level pools for RoIs not on it, and the
# extra row that keeps a head's batch from being empty.
PLACEHOLDER_ROI = (0.0, 0.0, 0.0, 1.0, 1.0)
# DeltaXYWHBBoxCoder.decode's default, which mmdet's heads never override.
WH_RATIO_CLIP = 16 / 1000
# ``NonMaxSuppression`` selects at most this many boxes per class: more than any detector here keeps.
MAX_NMS_OUTPUT = 2**31 - 1


@torch.library.custom_op('convnext_mm_export::nms', mutates_args=())
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes kept by greedy NMS, by descending score: ``mmcv.ops.nms``."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    return mmcv_nms(boxes.float(), scores.float(), iou_threshold)[1]  # mmcv's CPU kernel takes float32 only


@nms.register_fake
def _nms_shape(boxes, scores, iou_threshold):
    return boxes.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.long)


def nms_onnx(boxes, scores, iou_threshold: float):
    # One batch, one class: the kept boxes' indices are the third column of the selection, in score order.
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]), op.Unsqueeze(scores, [0, 1]), op.Constant(value_int=MAX_NMS_OUTPUT),
        op.Constant(value_float=iou_threshold))
    return op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])


@torch.library.custom_op('convnext_mm_export::roi_align', mutates_args=())
def roi_align(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
              sampling_ratio: int) -> Tensor:
    """mmcv's RoIAlign as mmdet's RoI extractors configure it: average pooling, ``aligned=True``."""
    pooled = mmcv_roi_align(features.float(), rois.float(), (output_size, output_size), spatial_scale,
                            sampling_ratio, 'avg', True)  # float32: mmcv's CPU kernel; back in the layers' type
    return pooled.to(features.dtype)


@roi_align.register_fake
def _roi_align_shape(features, rois, output_size, spatial_scale, sampling_ratio):
    return features.new_empty(rois.shape[0], features.shape[1], output_size, output_size)


def roi_align_onnx(features, rois, output_size: int, spatial_scale: float, sampling_ratio: int):
    batch_indices = op.Cast(op.Reshape(op.Slice(rois, [0], [1], [1]), [-1]), to=INT64.dtype)
    # Every attribute written out: OpenVINO reads a missing sampling_ratio as 1, ONNX's default is 0.
    return op.RoiAlign(
        features, op.Slice(rois, [1], [5], [1]), batch_indices, coordinate_transformation_mode='half_pixel',
        mode='avg', output_height=output_size, output_width=output_size, sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale)


ONNX_TRANSLATIONS = {torch.ops.convnext_mm_export.nms.default: nms_onnx,
                     torch.ops.convnext_mm_export.roi_align.default: roi_align_onnx}


class ExportError(ValueError):
    """The model holds a part this module does not reproduce."""


def decode(coder, priors, deltas, img_shape):
    """mmdet's ``delta2bbox`` (DeltaXYWHBBoxCoder) for (N, 4) deltas, clipped to ``img_shape`` (a tensor [h, w])."""
    deltas = deltas * deltas.new_tensor(coder.stds) + deltas.new_tensor(coder.means)
    dxy, dwh = deltas[:, :2], deltas[:, 2:]
    pxy = (priors[:, :2] + priors[:, 2:]) * 0.5
    pwh = priors[:, 2:] - priors[:, :2]
    max_ratio = abs(math.log(WH_RATIO_CLIP))
    dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + pwh * dxy
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if not coder.clip_border:
        return boxes
    zero = boxes.new_zeros(())
    x1, y1, x2, y2 = boxes.unbind(-1)
    height, width = img_shape[0], img_shape[1]
    return torch.stack([torch.minimum(torch.maximum(x1, zero), width), torch.minimum(torch.maximum(y1, zero), height),
                        torch.minimum(torch.maximum(x2, zero), width), torch.minimum(torch.maximum(y2, zero), height)],
                       dim=-1)


def batched_nms(boxes, scores, groups, iou_threshold):
    """mmcv's ``batched_nms``: the boxes of each group (FPN level, class) shifted apart by the largest coordinate
    plus one, then one NMS. mmcv loops over the groups past 10000 boxes, on the same shifted boxes: the same
    decisions. The appended 0 only keeps the maximum defined with no box (boxes are clipped at 0)."""
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def check_supported(model):
    """Stop with what differs where the model holds a part that is not rewritten here."""
    from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    problems = []
    if not hasattr(model, 'rpn_head') or not isinstance(model.roi_head, (CascadeRoIHead, StandardRoIHead)):
        raise ExportError(f'{type(model).__name__} is not a Mask R-CNN or Cascade Mask R-CNN (an RPN and a '
                          'standard or cascade RoI head): export its backbone with --backbone-only')
    roi_head = model.roi_head
    if not roi_head.with_mask:
        problems.append('the RoI head has no mask head')
    coders = [model.rpn_head.bbox_coder] + [head.bbox_coder for head in box_heads(roi_head)]
    for coder in coders:
        if type(coder) is not DeltaXYWHBBoxCoder or coder.add_ctr_clamp:
            problems.append(f'a box coder {type(coder).__name__} (only DeltaXYWHBBoxCoder without add_ctr_clamp)')
    if not model.rpn_head.use_sigmoid_cls:
        problems.append('an RPN head with softmax scores')
    extractors = list(roi_extractors(roi_head, 'bbox')) + list(roi_extractors(roi_head, 'mask'))
    for extractor in extractors:
        for layer in extractor.roi_layers:
            if getattr(layer, 'use_torchvision', False) or layer.pool_mode != 'avg' or not layer.aligned:
                problems.append(f'a RoI layer {layer!r} (only mmcv RoIAlign, avg, aligned)')
    if any(head.custom_cls_channels for head in box_heads(roi_head)):
        problems.append('a box head with a custom classification activation')
    if problems:
        raise ExportError(f'{type(model).__name__} cannot be exported whole: ' + '; '.join(sorted(set(problems)))
                          + ': export its backbone with --backbone-only')


def box_heads(roi_head):
    heads = roi_head.bbox_head
    return list(heads) if isinstance(heads, nn.ModuleList) else [heads]


def roi_extractors(roi_head, kind):
    extractors = getattr(roi_head, f'{kind}_roi_extractor')
    return list(extractors) if isinstance(extractors, nn.ModuleList) else [extractors]


class WholeDetector(nn.Module):
    """``model.predict(rescale=True)`` of a Mask R-CNN or Cascade Mask R-CNN for one image.

    Inputs: ``image`` (1, 3, H, W) as the data preprocessor makes it (normalized, padded); ``img_shape`` float
    [h, w] of the resized image before padding; ``scale_factor`` float [w, h] (resized / original);
    ``ori_shape`` int64 [h, w]. Outputs, by descending score: boxes (K, 4) in original-image pixels, scores (K),
    labels (K), masks (K, ori_h, ori_w) bool."""

    def __init__(self, model):
        super().__init__()
        check_supported(model)
        self.detector = model
        self.rpn_cfg = model.rpn_head.test_cfg
        self.rcnn_cfg = model.roi_head.test_cfg
        self.cascade = isinstance(model.roi_head.bbox_head, nn.ModuleList)

    def forward(self, image, img_shape, scale_factor, ori_shape):
        features = self.detector.extract_feat(image)
        proposals = self.propose(features, img_shape)
        boxes, scores, labels = self.detect(features, proposals, img_shape)
        original_boxes = boxes / scale_factor.repeat(2)  # as FCNMaskHead rescales them, in place, for mmdet
        return original_boxes, scores, labels, self.segment(features, boxes, labels, original_boxes, ori_shape)

    def propose(self, features, img_shape):
        """RPNHead.predict_by_feat for one image: per level the ``nms_pre`` best anchors, decoded and clipped;
        boxes of zero size dropped; NMS within each level; the ``max_per_img`` best."""
        head, cfg = self.detector.rpn_head, self.rpn_cfg
        cls_scores, bbox_preds = head(features)
        priors = head.prior_generator.grid_priors([s.shape[-2:] for s in cls_scores], dtype=features[0].dtype,
                                                  device=features[0].device)
        level_scores, level_deltas, level_priors, level_ids = [], [], [], []
        for level, (cls_score, bbox_pred, level_prior) in enumerate(zip(cls_scores, bbox_preds, priors)):
            scores = cls_score[0].permute(1, 2, 0).reshape(-1).sigmoid()
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, 4)
            if cfg.get('nms_pre', -1) > 0:
                scores, order = scores.topk(torch.sym_min(cfg.nms_pre, scores.shape[0]))
                deltas, level_prior = deltas[order], level_prior[order]
            level_scores.append(scores)
            level_deltas.append(deltas)
            level_priors.append(level_prior)
            level_ids.append(torch.full_like(scores, level, dtype=torch.long))
        boxes = decode(head.bbox_coder, torch.cat(level_priors), torch.cat(level_deltas), img_shape)
        scores, level_ids = torch.cat(level_scores), torch.cat(level_ids)
        if cfg.get('min_bbox_size', -1) >= 0:
            valid = ((boxes[:, 2] - boxes[:, 0]) > cfg.min_bbox_size) & ((boxes[:, 3] - boxes[:, 1]) > cfg.min_bbox_size)
            boxes, scores, level_ids = boxes[valid], scores[valid], level_ids[valid]
        keep = batched_nms(boxes, scores, level_ids, cfg.nms.iou_threshold)[:cfg.max_per_img]
        return boxes[keep]

    def roi_features(self, extractor, features, rois):
        """SingleRoIExtractor: each RoI pooled on the FPN level of its scale, floor(log2(sqrt(wh) / 56)) clamped to
        the levels; the level written as comparisons (ONNX's log2 is Log(x) / Log(2), which rounds otherwise)."""
        levels = len(extractor.featmap_strides)
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])) / extractor.finest_scale + 1e-6
        level = sum((scale >= 2.0**k).long() for k in range(1, levels))
        # A zero-size RoI pools to 0 in mmcv and ONNX Runtime, to NaN in OpenVINO: written as 0.
        has_area = (rois[:, 3] > rois[:, 1]) & (rois[:, 4] > rois[:, 2])
        placeholder = rois.new_tensor(PLACEHOLDER_ROI)
        layer0 = extractor.roi_layers[0]
        size = layer0.output_size[0] if isinstance(layer0.output_size, tuple) else layer0.output_size
        pooled = rois.new_zeros(rois.shape[0], extractor.out_channels, size, size)
        for index, (feature, layer) in enumerate(zip(features[:levels], extractor.roi_layers)):
            on_level = (level == index)[:, None]
            level_rois = torch.where(on_level, rois, placeholder)
            level_pooled = roi_align(feature, level_rois, size, float(layer.spatial_scale), int(layer.sampling_ratio))
            pooled = torch.where((on_level & has_area[:, None])[:, :, None, None], level_pooled, pooled)
        return pooled

    def head_forward(self, head, extractor, features, rois):
        """``head`` on the RoIs' pooled features. One placeholder RoI more, dropped after the head: no layer
        ever sees an empty batch (the exporter cannot prove a count of detections nonzero, and a norm layer
        asks)."""
        rois = torch.cat([rois, rois.new_tensor([PLACEHOLDER_ROI])])
        outputs = head(self.roi_features(extractor, features, rois))
        return tuple(o[:-1] for o in outputs) if isinstance(outputs, tuple) else outputs[:-1]

    def box_forward(self, stage, features, rois):
        roi_head = self.detector.roi_head
        return self.head_forward(box_heads(roi_head)[stage], roi_extractors(roi_head, 'bbox')[stage], features, rois)

    def detect(self, features, proposals, img_shape):
        """The box stage(s) and mmdet's ``multiclass_nms``: BBoxHead.predict_by_feat (CascadeRoIHead._refine_roi
        first for a cascade) without rescaling, as mmdet runs it when a mask head follows."""
        heads = box_heads(self.detector.roi_head)
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], dim=1)
        stage_logits = []
        for stage, head in enumerate(heads):
            logits, deltas = self.box_forward(stage, features, rois)
            stage_logits.append(logits)
            if stage < len(heads) - 1:  # regress_by_class with the argmax class (background excluded)
                if not head.reg_class_agnostic:  # indexed, not torch.gather: OpenVINO's GatherElements wants
                    label = logits[:, :-1].argmax(dim=1)  # index and data of one height, the export does not keep
                    deltas = deltas.reshape(deltas.shape[0], -1, 4)[torch.arange(deltas.shape[0]), label]
                rois = torch.cat([rois[:, :1], decode(head.bbox_coder, rois[:, 1:], deltas, img_shape)], dim=1)
        logits = sum(stage_logits) / float(len(stage_logits))  # as mmdet: sum from 0, then divide
        head = heads[-1]
        scores = torch.softmax(logits, dim=-1)
        classes = head.num_classes
        per_roi = 1 if head.reg_class_agnostic else classes
        boxes = decode(head.bbox_coder, rois[:, 1:].repeat_interleave(per_roi, dim=0), deltas.reshape(-1, 4),
                       img_shape).reshape(rois.shape[0], per_roi, 4).expand(-1, classes, -1).reshape(-1, 4)
        labels = torch.arange(classes, device=scores.device).expand(rois.shape[0], classes).reshape(-1)
        scores = scores[:, :-1].reshape(-1)
        valid = scores > self.rcnn_cfg.score_thr
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        keep = batched_nms(boxes, scores, labels, self.rcnn_cfg.nms.iou_threshold)[:self.rcnn_cfg.max_per_img]
        return boxes[keep], scores[keep], labels[keep]

    def segment(self, features, boxes, labels, original_boxes, ori_shape):
        """predict_mask: the mask head(s) on the detected boxes (cascade: the mean of the three heads' sigmoid
        probabilities), the label's channel, pasted at the original size and thresholded as FCNMaskHead does."""
        roi_head = self.detector.roi_head
        mask_heads = list(roi_head.mask_head) if self.cascade else [roi_head.mask_head]
        extractors = roi_extractors(roi_head, 'mask')
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        probabilities = [self.head_forward(head, extractors[stage % len(extractors)], features, rois).sigmoid()
                         for stage, head in enumerate(mask_heads)]
        probabilities = torch.stack(probabilities).mean(dim=0) if self.cascade else probabilities[0]
        if not mask_heads[-1].class_agnostic:
            probabilities = probabilities[torch.arange(labels.shape[0], device=labels.device), labels]
        else:
            probabilities = probabilities[:, 0]
        return paste_masks(probabilities, original_boxes, ori_shape) >= self.rcnn_cfg.mask_thr_binary


def paste_masks(masks, boxes, ori_shape):
    """mmdet's ``_do_paste_mask`` on the CPU (grid_sample, bilinear, zero padding, align_corners=False, within
    the box's pixels widened by 1), written as two matrix products: the sampling grid of a box is separable, so
    each output pixel is sum_ij wy(y, i) mask(i, j) wx(x, j) with the bilinear hat weights."""
    height, width = ori_shape[0].item(), ori_shape[1].item()
    torch._check(height > 0)
    torch._check(width > 0)
    size = masks.shape[-1]
    x0, y0, x1, y1 = (boxes[:, i:i + 1] for i in range(4))
    texels = torch.arange(size, device=masks.device).to(torch.float32)

    def weights(start, end, length):
        """(K, length, size): the bilinear weights of each texel for each pixel centre, 0 off the widened box."""
        pixels = torch.arange(length, device=masks.device).to(torch.float32)
        grid = (pixels + 0.5 - start) / (end - start) * 2 - 1
        grid = torch.where(torch.isinf(grid), 0.0, grid)  # mmdet: a zero-size box samples the mask's centre
        position = ((grid + 1) * size - 1) / 2
        hat = torch.clamp(1 - torch.abs(position[:, :, None] - texels), min=0)
        pasted = (pixels >= torch.clamp(start.floor() - 1, min=0)) & (pixels < end.ceil() + 1)
        return hat * pasted[:, :, None]

    return weights(y0, y1, height) @ masks @ weights(x0, x1, width).transpose(1, 2)
