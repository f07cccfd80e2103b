"""ConvNeXt weights as each public release lays them out, written from a backbone of this package: the official
ConvNeXt and ConvNeXt V2 files (and V2's FCMAE pre-training files), timm's, mmpretrain's and the model zoos', and
this package's own files (0.1's timm names included), a backbone alone or inside a detector. The tests save these
and load them back through every loader."""
import re

import numpy as np
import torch

from convnext_mm import ConvNeXt
from tiny_models import SMALLEST_ARCH, randomize


def make_source(use_grn=False):
    """A trained-looking backbone: every tensor random, the output norms too (so loading them is checked)."""
    return randomize(ConvNeXt(arch=SMALLEST_ARCH, use_grn=use_grn))


def backbone_tensors(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not re.match(r'norm\d\.', k)}


def classifier(dim, classes=10):
    """An ImageNet classifier's final norm and head on features of ``dim`` channels."""
    return {'norm.weight': torch.ones(dim), 'norm.bias': torch.zeros(dim),
            'head.weight': torch.randn(classes, dim), 'head.bias': torch.zeros(classes)}


# Each public layout's names, written out from the real files (a block's tensors; "{s}", "{b}", "{j}": stage, block,
# layer within a downsample layer). Each maps the official name (ours) to the layout's.
TIMM_BLOCK = {'gamma': 'gamma', 'dwconv': 'conv_dw', 'norm': 'norm', 'pwconv1': 'mlp.fc1', 'pwconv2': 'mlp.fc2',
              'grn.gamma': 'mlp.grn.weight', 'grn.beta': 'mlp.grn.bias'}
MMPRETRAIN_BLOCK = {'gamma': 'gamma', 'dwconv': 'depthwise_conv', 'norm': 'norm', 'pwconv1': 'pointwise_conv1',
                    'pwconv2': 'pointwise_conv2', 'grn.gamma': 'grn.gamma', 'grn.beta': 'grn.beta'}


def renamed(official_key, layout):
    """``official_key`` in ``layout`` ('official', 'timm', 'mmpretrain', 'convnext_mm 0.1')."""
    parts = official_key.split('.')
    if parts[0] == 'downsample_layers':
        i, rest = int(parts[1]), '.'.join(parts[2:])
        if layout in ('timm', 'convnext_mm 0.1'):
            return f'stem.{rest}' if i == 0 else f'stages.{i}.downsample.{rest}'
        return official_key
    stage, block, tensor = parts[1], parts[2], '.'.join(parts[3:])
    module, _, param = tensor.rpartition('.')
    if tensor in ('gamma', 'grn.gamma', 'grn.beta'):
        module, param = tensor, None
    name = {'timm': TIMM_BLOCK, 'mmpretrain': MMPRETRAIN_BLOCK}.get(layout, {m: m for m in TIMM_BLOCK})[module]
    name = name if param is None else f'{name}.{param}'
    if layout in ('timm', 'convnext_mm 0.1'):
        return f'stages.{stage}.blocks.{block}.{name}'
    return f'stages.{stage}.{block}.{name}'



def official_layout(model):
    """The facebookresearch/ConvNeXt release: {'model': ...}, downsample_layers.I.J, stages.S.B.*, classifier."""
    out = {}
    for key, value in backbone_tensors(model).items():
        if key.endswith(('grn.gamma', 'grn.beta')):
            value = value.reshape(1, 1, 1, -1)  # ConvNeXt V2's shape
        out[renamed(key, 'official')] = value
    return {'model': {**out, **classifier(model.dims[-1])}}


def timm_layout(model):
    out = {renamed(key, 'timm'): value for key, value in backbone_tensors(model).items()}
    head = classifier(model.dims[-1])  # timm's names: head.norm, head.fc
    return {**out, 'head.norm.weight': head['norm.weight'], 'head.norm.bias': head['norm.bias'],
            'head.fc.weight': head['head.weight'], 'head.fc.bias': head['head.bias']}


def mmpretrain_layout(model):
    out = {'backbone.' + renamed(key, 'mmpretrain'): value for key, value in backbone_tensors(model).items()}
    # mmpretrain's classifier keeps its final norm as backbone.norm3 (trained, so it is loaded).
    out['backbone.norm3.weight'] = model.norm3.weight.detach().clone()
    out['backbone.norm3.bias'] = model.norm3.bias.detach().clone()
    head = classifier(model.dims[-1])
    out['head.fc.weight'], out['head.fc.bias'] = head['head.weight'], head['head.bias']
    return {'meta': {'epoch': np.int64(300), 'mean': np.array([123.675, 116.28, 103.53])}, 'state_dict': out}


def mmpretrain_conv_layout(model):
    """mmpretrain with ``linear_pw_conv=False``: the pointwise layers are 1x1 convolutions."""
    checkpoint = mmpretrain_layout(model)
    checkpoint['state_dict'] = {k: v[:, :, None, None] if re.search(r'pointwise_conv\d\.weight$', k) else v
                                for k, v in checkpoint['state_dict'].items()}
    return checkpoint


def fcmae_layout(model):
    """A ConvNeXt V2 FCMAE pre-training file: the encoder in MinkowskiEngine's layout, as the inverse of the
    official ConvNeXt-V2 ``remap_checkpoint_keys`` (the stem is a dense conv there, too), and a decoder."""
    out = {}
    for key, value in backbone_tensors(model).items():
        parts = key.split('.')
        if key.startswith('downsample_layers.0.'):
            pass
        elif key.endswith('dwconv.weight'):  # (C, 1, k, k) -> (k*k, C)
            key, value = key[:-len('weight')] + 'kernel', value.transpose(3, 2).reshape(value.shape[0], -1).t()
        elif key.startswith('downsample_layers.') and parts[2] == '1' and parts[3] == 'weight':
            out_dim, in_dim, k, _ = value.shape  # (C_out, C_in, k, k) -> (k*k, C_in, C_out)
            key, value = key[:-len('weight')] + 'kernel', value.transpose(3, 2).reshape(out_dim, in_dim, k * k).permute(
                2, 1, 0)
        elif re.search(r'(\.norm|^downsample_layers\.\d\.0)\.(weight|bias)$', key):
            key = key.rsplit('.', 1)[0] + '.ln.' + key.rsplit('.', 1)[1]
        elif re.search(r'\.pwconv\d\.(weight|bias)$', key):
            key = key.rsplit('.', 1)[0] + '.linear.' + key.rsplit('.', 1)[1]
        # Sparse convolutions and GRN keep (1, C); MinkowskiLinear and MinkowskiLayerNorm wrap torch's (C,).
        if re.search(r'(\.dwconv\.bias|^downsample_layers\.[123]\.1\.bias|\.grn\.\w+)$', key):
            value = value.reshape(1, -1)
        out['encoder.' + key] = value.clone()
    out['mask_token'] = torch.zeros(1, model.dims[-1], 1, 1)
    out['decoder.0.weight'] = torch.randn(4, model.dims[-1])
    return {'model': out}


def own_backbone_file(model):
    return model.state_dict()


def own_file_before_0_2(model):
    """A backbone saved by convnext_mm 0.1, whose names were timm's (stem, stages.S.downsample, stages.S.blocks.B)."""
    return {renamed(k, 'convnext_mm 0.1') if not re.match(r'norm\d\.', k) else k: v
            for k, v in model.state_dict().items()}


def own_detector_checkpoint(model):
    state = {'backbone.' + k: v for k, v in model.state_dict().items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 8, 1, 1)
    return {'meta': {'iter': np.int64(10), 'seed': np.int32(0)}, 'state_dict': state}


def ddp_detector_checkpoint(model):
    """A detector saved from inside DistributedDataParallel: every key under ``module.``."""
    checkpoint = own_detector_checkpoint(model)
    checkpoint['state_dict'] = {'module.' + k: v for k, v in checkpoint['state_dict'].items()}
    return checkpoint


def ddp_module_file(model):
    return {'module': own_backbone_file(model)}



def whole_model_in_layout(state_dict, layout):
    """A detector's or segmentor's state dict with its backbone's tensors (``backbone.*``) under ``layout``'s
    names (see ``renamed``), the rest as it is."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith('backbone.') and not re.match(r'backbone\.norm\d\.', key):
            key = 'backbone.' + renamed(key[len('backbone.'):], layout)
        out[key] = value
    return out
