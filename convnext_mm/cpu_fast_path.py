"""The CPU inference path of a ConvNeXt block's pointwise part (after the depthwise conv): LayerNorm, Linear to 4C,
GELU, [GRN], Linear to C, layer scale and residual, with the plain path's arithmetic per pixel but run where this
project's CPUs are fast. One entry from the block: :func:`applies`, then :func:`pointwise`.

- Both Linears run in oneDNN's matrix product (``torch.ops.mkldnn._linear_pointwise``, what inductor uses on the
  CPU), faster than MKL's ``addmm`` on AMD CPUs, with the exact (erf) GELU fused into the first: two passes fewer
  over the 4C-wide activation, the largest tensor of a block.
- V1 blocks go ``PIXELS_PER_CHUNK`` pixels at a time into one preallocated output: a chunk's hidden map stays in
  the cache and its buffer is reused, where the whole map's would be a fresh allocation (page faults) of up to 4x
  the block's input, written to memory and read back (1.5-1.9x faster for a stage-1 block, docs/benchmarks.md).
  V2 blocks keep the whole map, as GRN's norm spans it.
- Under ``torch.autocast('cpu', dtype=torch.bfloat16)`` the same path runs in bfloat16 with cached weight copies
  (:func:`inference_weights`); LayerNorm statistics stay in float32 (PyTorch's kernel).

Everywhere else the block takes its plain path: with gradients (the fused ops have no autograd formula), on
other devices, under other autocast dtypes, under torch.compile (inductor fuses for itself) and while tracing
(mmengine's FLOP counter traces the model; the fused ops neither trace nor count).
"""
import weakref

import torch
import torch.nn.functional as F

# Pixels per chunk of a V1 block's MLP: the 4C-wide hidden map of a chunk, 2048 x 4C floats (3 MiB at C=96),
# stays in the cache.
PIXELS_PER_CHUNK = 2048
# oneDNN's Linear with a fused activation; None where torch lacks oneDNN.
ONEDNN_LINEAR_POINTWISE = (getattr(torch.ops.mkldnn, '_linear_pointwise', None)
                           if torch.backends.mkldnn.is_available() else None)
# oneDNN's reorder of a Linear's weight into its blocked layout for a given number of rows (inductor's weight
# prepacking); None where torch lacks it.
ONEDNN_REORDER_LINEAR_WEIGHT = (getattr(torch.ops.mkldnn, '_reorder_linear_weight', None)
                                if ONEDNN_LINEAR_POINTWISE is not None else None)
# inference_weights' cache: per block, (dtype and parameter versions, bfloat16 copies of the parameters).
INFERENCE_WEIGHTS = weakref.WeakKeyDictionary()


def inference_dtype(x):
    """The dtype this path runs ``x`` in: float32 in CPU inference, bfloat16 in CPU inference under bfloat16
    autocast; None where the block's plain path runs (see the module doc)."""
    if (ONEDNN_LINEAR_POINTWISE is None or x.device.type != 'cpu' or torch.is_grad_enabled()
            or torch.compiler.is_compiling() or torch.jit.is_tracing()):
        return None
    if torch.is_autocast_enabled('cpu'):
        return torch.bfloat16 if torch.get_autocast_dtype('cpu') == torch.bfloat16 else None
    return torch.float32 if x.dtype == torch.float32 else None


def applies(block, x):
    """Whether ``block`` (a ConvNeXtBlock) takes this path for ``x``, its depthwise conv's NHWC output."""
    dtype = inference_dtype(x)
    if dtype is None or block.training:
        return False
    return block.grn is None or dtype == torch.float32  # GRN under bf16: the plain path, its norms in float32


def pointwise(block, x, shortcut):
    """The block's output from ``x`` (its depthwise conv's output, NHWC view) and ``shortcut`` (its input)."""
    if block.grn is not None:
        return _pointwise_v2(block, x, shortcut)
    return _pointwise_in_chunks(block, x, shortcut, inference_dtype(x))


def _pointwise_in_chunks(block, x, shortcut, dtype):
    """V1: norm, Linear+GELU, Linear, layer scale and residual, ``PIXELS_PER_CHUNK`` pixels at a time into one
    channels_last output of ``dtype``; no drop path in eval mode."""
    dim = x.shape[-1]
    weight1, bias1, weight2, bias2, gamma = inference_weights(block, dtype)
    norm = block.norm
    rows = x.reshape(-1, dim)  # a view where x is channels_last, as in the backbone
    out = torch.empty_like(shortcut, dtype=dtype, memory_format=torch.channels_last)
    out_rows = out.permute(0, 2, 3, 1).view(-1, dim)
    shortcut_rows = shortcut.permute(0, 2, 3, 1).reshape(-1, dim)
    for start in range(0, rows.shape[0], PIXELS_PER_CHUNK):
        chunk = slice(start, start + PIXELS_PER_CHUNK)
        # PyTorch's LayerNorm kernel computes a bfloat16 input's statistics in float32.
        hidden = F.layer_norm(rows[chunk].to(dtype), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        hidden = linear(linear_gelu(hidden, weight1, bias1), weight2, bias2)
        residual = shortcut_rows[chunk].to(dtype)
        if gamma is None:
            torch.add(residual, hidden, out=out_rows[chunk])
        else:
            torch.addcmul(residual, hidden, gamma, out=out_rows[chunk])
    return out


def _pointwise_v2(block, x, shortcut):
    """V2 in float32: the plain path on the whole map (GRN's norm spans it) with Linear+GELU fused."""
    x = linear_gelu(block.norm(x), block.pwconv1.weight, block.pwconv1.bias)
    x = block.pwconv2(block.grn(x))
    return shortcut + x.permute(0, 3, 1, 2)


def inference_weights(block, dtype):
    """Both Linears' weights and biases and the layer scale of ``block``, in ``dtype``: the parameters themselves
    in float32; in bfloat16, copies cast once, the weights reordered into oneDNN's blocked layout for chunks of
    ``PIXELS_PER_CHUNK`` rows (8-10% faster bf16 inference, docs/benchmarks.md), and cached until a parameter
    changes (so a bfloat16 forward casts no weight): keyed on each parameter's storage and version counter, which
    every in-place write bumps (``load_state_dict``, optimizer steps), the float32 parameters staying the only
    truth. The cache lives beside the module (``INFERENCE_WEIGHTS``), not in it: copies and pickles of the module
    do not carry it (oneDNN's blocked tensors cannot be copied)."""
    params = (block.pwconv1.weight, block.pwconv1.bias, block.pwconv2.weight, block.pwconv2.bias, block.gamma)
    if dtype == torch.float32:
        return params
    key = (dtype, ) + tuple((p.data_ptr(), p._version) for p in params if p is not None)
    cached = INFERENCE_WEIGHTS.get(block)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            weights = [None if p is None else p.detach().to(dtype) for p in params]
        if ONEDNN_REORDER_LINEAR_WEIGHT is not None:
            weights[0], weights[2] = (ONEDNN_REORDER_LINEAR_WEIGHT(weights[i], PIXELS_PER_CHUNK) for i in (0, 2))
        cached = INFERENCE_WEIGHTS[block] = (key, tuple(weights))
    return cached[1]


def linear_gelu(x, weight, bias):
    """``GELU(x W^T + b)`` with the exact (erf) GELU, computed inside oneDNN's matrix product."""
    return ONEDNN_LINEAR_POINTWISE(x, weight, bias, 'gelu', [], 'none')


def linear(x, weight, bias):
    """``x W^T + b`` in oneDNN's matrix product."""
    return ONEDNN_LINEAR_POINTWISE(x, weight, bias, 'none', [], '')
