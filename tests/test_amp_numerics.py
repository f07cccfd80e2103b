"""fp16 and bf16 autocast on activations as large as trained models produce: no overflow, no NaN, no constant
output.

Users of the official code report NaN losses under fp16 AMP: its channels-first LayerNorm computes the variance
as ``(x - u).pow(2).mean(1)`` in the input's dtype, and the squares of activations above 256 pass fp16's largest
value (65504). Trained ConvNeXts carry residual maps of hundreds to thousands in their later stages. Each test
first checks that its input is large enough for the naive fp16 computation to overflow, then that ours does not
and matches the fp32 computation; bf16 has fp32's range but 8 significant bits, so its checks are of precision
only. Run on the CPU (torch's CPU autocast takes fp16 too) and, where there is one, on a CUDA GPU, which is where
users train with AMP.
"""
import pytest
import torch

from convnext_mm import ConvNeXt
from convnext_mm.blocks import GRN, LayerNorm2d

from tiny_models import randomize

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
FP16_MAX = torch.finfo(torch.float16).max
# Relative error (whole-tensor norms) allowed against fp32. fp16 keeps 11 significant bits, 5e-4 relative rounding
# per value; bf16 8 bits, 4e-3. Measured on the CPU: 3e-4 to 7e-4 in fp16, 2.3e-3 to 5.6e-3 in bf16. The bounds
# leave room for CUDA's TF32 convolutions in the fp32 reference; an overflow gives inf or NaN, caught apart.
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 2e-2}
DTYPES = [pytest.param(torch.float16, id='fp16'), pytest.param(torch.bfloat16, id='bf16')]


def large_activations(shape, device, generator_seed=0):
    """Values of magnitude ~1000 on an offset of 500, as a trained model's late-stage residual map."""
    generator = torch.Generator().manual_seed(generator_seed)
    return (torch.randn(shape, generator=generator) * 1000 + 500).to(device)


def naive_fp16_squares_overflow(x, dim):
    x = x.half()
    return bool(torch.isinf((x - x.mean(dim, keepdim=True)).pow(2)).any())


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def assert_autocast_matches_fp32(module, x, device, dtype):
    """``module`` on ``x`` cast to ``dtype`` under autocast: finite, and within the dtype's tolerance of fp32."""
    reference = module(x)
    with torch.autocast(device, dtype=dtype):
        out = module(x.to(dtype))
    assert torch.isfinite(out).all()
    assert relative_error(out, reference) < TOLERANCE[dtype]


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('device', DEVICES)
def test_layer_norm_2d_of_large_activations_under_autocast(device, dtype):
    x = large_activations((2, 64, 8, 8), device)
    assert naive_fp16_squares_overflow(x, dim=1)  # the input does stress fp16
    assert_autocast_matches_fp32(LayerNorm2d(64, eps=1e-6).to(device), x, device, dtype)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('device', DEVICES)
def test_grn_of_large_activations_under_autocast(device, dtype):
    # NHWC, 4C wide, as after a block's GELU; the sum of squares over 16x16 pixels is ~1e8, far past fp16.
    x = large_activations((2, 16, 16, 256), device).abs()
    assert (x.float().pow(2).sum(dim=(1, 2)) > FP16_MAX).all()
    grn = GRN(256).to(device)
    with torch.no_grad():
        grn.gamma.uniform_(-1, 1)
        grn.beta.uniform_(-1, 1)
    assert_autocast_matches_fp32(grn, x, device, dtype)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('use_grn', [False, True], ids=['v1', 'v2'])
@pytest.mark.parametrize('device', DEVICES)
def test_backbone_with_large_residual_maps_under_autocast(device, use_grn, dtype):
    torch.manual_seed(0)
    model = randomize(ConvNeXt(arch=dict(depths=[1, 1, 2, 1], dims=[16, 32, 64, 128]), use_grn=use_grn))
    with torch.no_grad():  # large layer scales (V1) or GRN gains (V2) grow the residual maps to the thousands
        for name, param in model.named_parameters():
            if name.endswith('.gamma'):
                param.mul_(40)
    model = model.to(device).eval()
    residual_peaks = []
    for stage in model.stages:
        stage.register_forward_hook(lambda module, args, out: residual_peaks.append(out.float().abs().max().item()))
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad():
        reference = model(x)
        assert max(residual_peaks) > 256  # squares past fp16's range: the official LayerNorm would overflow
        with torch.autocast(device, dtype=dtype):
            outs = model(x)
    for out, ref in zip(outs, reference):
        assert torch.isfinite(out).all()
        assert out.float().std() > 0.1  # not collapsed to a constant
        assert relative_error(out, ref) < TOLERANCE[dtype]
