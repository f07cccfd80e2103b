"""Cascade Mask R-CNN with a ConvNeXt backbone: mmdet's model, with the official release's box heads.

Each stage's box head is ``4conv1fc`` with SyncBN, class-specific regression of decoded boxes under a GIoU loss
(weight 10); the stages differ only in their regression target stds. The configs under configs/cascade set the
backbone size, its drop path rate and its ImageNet checkpoint.
"""
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    './convnext_coco_instance_3x.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        out_indices=(0, 1, 2, 3),
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained')),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=target_stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for target_stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]))
