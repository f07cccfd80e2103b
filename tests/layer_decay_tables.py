"""The official ConvNeXt layer-decay rules written out for ConvNeXt-T and -S (layer_wise) and any size
(stage_wise): backbone parameter-name prefix -> layer id, and the lr scale of each id, decay_rate ** (L - id - 1)
with L = num_layers + 2. Written from the official release's rules, not computed by the code under test."""


CONVNEXT_T_LAYER_WISE_IDS = {
    'backbone.downsample_layers.0.': 0,
    'backbone.stages.0.': 1,
    'backbone.downsample_layers.1.': 2,
    'backbone.stages.1.': 2,
    'backbone.downsample_layers.2.': 3,
    'backbone.stages.2.0.': 3,
    'backbone.stages.2.1.': 3,
    'backbone.stages.2.2.': 3,
    'backbone.stages.2.3.': 4,
    'backbone.stages.2.4.': 4,
    'backbone.stages.2.5.': 4,
    'backbone.stages.2.6.': 5,
    'backbone.stages.2.7.': 5,
    'backbone.stages.2.8.': 5,
    'backbone.downsample_layers.3.': 6,
    'backbone.stages.3.': 6,
    'backbone.norm0.': 7,
    'backbone.norm1.': 7,
    'backbone.norm2.': 7,
    'backbone.norm3.': 7,
    'neck.': 7,
    'head.': 7,
}
# lr scale R ** (L - id - 1) with L = N + 2.
CONVNEXT_T_LAYER_WISE_SCALES = {
    0.95: {0: 0.6983372961, 1: 0.7350918906, 2: 0.7737809375, 3: 0.81450625, 4: 0.857375, 5: 0.9025, 6: 0.95,
           7: 1.0},
    0.7: {0: 0.0823543, 1: 0.117649, 2: 0.16807, 3: 0.2401, 4: 0.343, 5: 0.49, 6: 0.7, 7: 1.0},
}

CONVNEXT_S_STAGE2_BLOCKS_BY_ID = {
    3: (0, 1, 2), 4: (3, 4, 5), 5: (6, 7, 8), 6: (9, 10, 11), 7: (12, 13, 14), 8: (15, 16, 17), 9: (18, 19, 20),
    10: (21, 22, 23), 11: (24, 25, 26)}
CONVNEXT_S_LAYER_WISE_IDS = {
    'backbone.downsample_layers.0.': 0,
    'backbone.stages.0.': 1,
    'backbone.downsample_layers.1.': 2,
    'backbone.stages.1.': 2,
    'backbone.downsample_layers.2.': 3,
    **{f'backbone.stages.2.{block}.': layer_id
       for layer_id, blocks in CONVNEXT_S_STAGE2_BLOCKS_BY_ID.items() for block in blocks},
    'backbone.downsample_layers.3.': 12,
    'backbone.stages.3.': 12,
    'backbone.norm0.': 13,
    'backbone.norm1.': 13,
    'backbone.norm2.': 13,
    'backbone.norm3.': 13,
    'neck.': 13,
    'head.': 13,
}
CONVNEXT_S_LAYER_WISE_SCALES_07 = {
    0: 0.009688901041, 1: 0.0138412872, 2: 0.01977326743, 3: 0.0282475249, 4: 0.040353607, 5: 0.05764801,
    6: 0.0823543, 7: 0.117649, 8: 0.16807, 9: 0.2401, 10: 0.343, 11: 0.49, 12: 0.7, 13: 1.0}


def stage_wise_ids(num_layers):
    return {
        'backbone.downsample_layers.0.': 0,
        'backbone.downsample_layers.1.': 0,
        'backbone.downsample_layers.2.': 0,
        'backbone.downsample_layers.3.': 0,
        'backbone.stages.0.': 1,
        'backbone.stages.1.': 2,
        'backbone.stages.2.': 3,
        'backbone.stages.3.': 4,
        'backbone.norm': num_layers + 1,
        'neck.': num_layers + 1,
        'head.': num_layers + 1,
    }


# With N = 12 the same four stages decay harder than with N = 6 (the head's id moves, the stages' do not).
STAGE_WISE_SCALES_09 = {
    6: {0: 0.4782969, 1: 0.531441, 2: 0.59049, 3: 0.6561, 4: 0.729, 7: 1.0},
    12: {0: 0.2541865828, 1: 0.2824295365, 2: 0.3138105961, 3: 0.3486784401, 4: 0.387420489, 13: 1.0},
}
