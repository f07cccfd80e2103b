"""Every fast path of the backbone gives the outputs and gradients of the plain formulation, and the one rule that
chooses among them (convnext_mm/cpu_fast_path.py) chooses as it says.

The fast paths: channels_last maps throughout (convnext_mm/backbone.py), CPU inference of each block's MLP in
chunks of pixels with oneDNN's Linears, GELU fused into the first (float32, and bfloat16 under autocast, with
cached bfloat16 copies of the weights), CPU training with both Linears' products and gradients in oneDNN, and the
``compile`` option. The plain formulation is the paper's (tests/reference.py, which
benchmarks/benchmark_backbone.py times ours against), or the same block run on NCHW input, with autograd on or with
training's products in MKL. Speed is measured by that benchmark, not here.
"""
import pytest
import torch

from convnext_mm import ConvNeXt
from convnext_mm import cpu_fast_path
from convnext_mm.blocks import GRN, ConvNeXtBlock

import reference
from project import CASCADE_T
from tiny_models import SMALLEST_ARCH, randomize

# Each element within RTOL of its reference, or within ATOL of the tensor's largest magnitude: float32 rounding
# only. The second bound is for entries that are sums cancelling to near zero, whose rounding error follows the
# size of their terms; at 3e-6 it is 3x below the required 1e-5 relative to the largest magnitude, so
# a small gradient entry cannot be wrong by more than that.
RTOL = 1e-5
ATOL = 3e-6


def assert_all_close(tensors, references):
    assert len(tensors) == len(references)
    for a, b in zip(tensors, references):
        assert a.shape == b.shape
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL * scale)


def step(model, x, train):
    """Outputs, input gradient and parameter gradients of a loss over all outputs (training), or the outputs."""
    def outputs(x):
        outs = model(x)
        return [outs] if isinstance(outs, torch.Tensor) else list(outs)  # a block gives one map

    if not train:
        model.eval()
        with torch.no_grad():
            return outputs(x)
    model.train()
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()  # a leaf, in the memory layout given
    outs = outputs(x)
    sum((o * o).mean() for o in outs).backward()
    # flattened: the reference's GRN parameters are (1, 1, 1, C) as in ConvNeXt V2, ours (C,)
    return [o.detach() for o in outs] + [x.grad] + [p.grad.flatten() for _, p in sorted(model.named_parameters())]


needs_onednn = pytest.mark.skipif(cpu_fast_path.onednn_ops() is None,
                                  reason="this torch has no working oneDNN Linear (torch.ops.mkldnn._linear_pointwise)")


@pytest.fixture
def products(monkeypatch):
    """Records ``(activation, input dtype)`` of every product oneDNN's fused Linear computes (inference and
    training, forward and backward), so a test knows which path ran and in which dtype; stays empty where torch
    has no working oneDNN Linear."""
    calls = []
    ops = cpu_fast_path.onednn_ops()
    if ops is not None:
        linear_pointwise, reorder = ops

        def counting(x, weight, bias, activation, *args):
            calls.append((activation, x.dtype))
            return linear_pointwise(x, weight, bias, activation, *args)

        monkeypatch.setattr(cpu_fast_path, 'onednn_ops', lambda: (counting, reorder))
    return calls


@pytest.fixture
def paths(monkeypatch):
    """Records each block's path (:func:`cpu_fast_path.block_path`'s answer), in forward order."""
    chosen = []
    rule = cpu_fast_path.block_path

    def recording(block, x):
        chosen.append(rule(block, x))
        return chosen[-1]

    monkeypatch.setattr(cpu_fast_path, 'block_path', recording)
    return chosen


def paper_pair(seed=0, **kwargs):
    ours = randomize(ConvNeXt(arch=SMALLEST_ARCH, out_indices=(0, 1, 2, 3), **kwargs), seed)
    return ours, reference.like(ours)


BLOCKS = sum(SMALLEST_ARCH['depths'])


@needs_onednn
def test_inference_matches_the_paper_formulation(products, paths):
    ours, paper = paper_pair()
    x = torch.randn(2, 3, 70, 97)
    assert_all_close(step(ours, x, train=False), step(paper, x, train=False))
    assert paths == ['inference'] * BLOCKS  # every block took both fused products, in float32
    assert products == [('gelu', torch.float32), ('none', torch.float32)] * BLOCKS


@pytest.fixture(params=['onednn', 'mkl'])
def training_library(request, products):
    """Training's products in oneDNN (the fast path) or MKL (nn.Linear), whatever this machine's rule chooses;
    yields the library and the list of oneDNN products."""
    if request.param == 'onednn' and cpu_fast_path.onednn_ops() is None:
        pytest.skip('this torch has no working oneDNN Linear (torch.ops.mkldnn._linear_pointwise)')
    with cpu_fast_path.use_training_library(request.param):
        yield request.param, products


@pytest.mark.parametrize('kwargs', [dict(), dict(layer_scale_init_value=0), dict(use_grn=True)],
                         ids=['layer_scale', 'no_layer_scale', 'v2_grn'])
def test_training_step_matches_the_paper_formulation(training_library, kwargs):
    library, products = training_library
    ours, paper = paper_pair(**kwargs)
    # A fixed input: two float32 summation orders differ by rounding only, and over every input some entry that
    # cancels to near zero lands just past the bound (1 in 120 seeds); the float64 test below judges both.
    x = torch.randn(2, 3, 70, 97, generator=torch.Generator().manual_seed(0))
    assert_all_close(step(ours, x, train=True), step(paper, x, train=True))
    # per block: both Linears forward, each one's input and weight gradient
    assert products == ([('none', torch.float32)] * 6 * BLOCKS if library == 'onednn' else [])


def test_training_gradients_are_as_close_to_float64_as_the_paper_formulations(training_library):
    """Judged by the paper's formulation in float64: ours in float32 (oneDNN's summation orders or MKL's) is
    within the float32 bound of it, as the paper's own float32 run is."""
    ours, paper = paper_pair()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    exact = [t.float() for t in step(paper.double(), x, train=True)]
    assert_all_close(step(ours, x.float(), train=True), exact)
    assert_all_close(step(paper.float(), x.float(), train=True), exact)


def test_training_gradients_have_the_parameters_layout(training_library):
    """Each gradient is laid out as its parameter (contiguous): DDP's gradient buckets are views in that layout
    and would warn and copy otherwise."""
    ours, _ = paper_pair()
    step(ours, torch.randn(2, 3, 64, 64), train=True)
    for name, param in ours.named_parameters():
        assert param.is_contiguous() and param.grad.is_contiguous(), name


@needs_onednn
def test_drop_path_and_with_cp_train_the_same_on_both_libraries():
    """Drop path draws the same masks and with_cp recomputes the same forward whichever library trains."""
    results = []
    for library in ('mkl', 'onednn'):
        model = randomize(ConvNeXt(arch=SMALLEST_ARCH, out_indices=(0, 1, 2, 3), drop_path_rate=0.5, with_cp=True))
        torch.manual_seed(0)
        with cpu_fast_path.use_training_library(library):
            results.append(step(model, torch.randn(2, 3, 64, 64), train=True))
    assert_all_close(results[1], results[0])


@needs_onednn
def test_frozen_stages_train_the_rest_and_take_the_inference_path(training_library, paths, monkeypatch):
    """A frozen stage needs no gradient: its block takes the inference path (fused, chunked) under autograd;
    the stages after it train; outputs and gradients equal the plain path's."""
    library, _ = training_library

    def frozen_step():
        model = randomize(ConvNeXt(arch=SMALLEST_ARCH, out_indices=(0, 1, 2, 3), frozen_stages=1)).train()
        outs = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        sum((o * o).mean() for o in outs).backward()
        assert all(p.grad is None for p in model.stages[0].parameters())
        assert not outs[0].requires_grad and outs[1].requires_grad
        return [o.detach() for o in outs] + [p.grad for p in model.parameters() if p.requires_grad]

    fast = frozen_step()
    assert paths == ['inference'] + ['training' if library == 'onednn' else 'plain'] * (BLOCKS - 1)
    monkeypatch.setattr(cpu_fast_path, 'block_path', lambda block, x: 'plain')
    assert_all_close(fast, frozen_step())


@pytest.mark.parametrize('vendor, library', [('AuthenticAMD', 'onednn'), ('GenuineIntel', 'mkl'), ('', 'mkl')])
def test_training_library_follows_the_cpu_vendor_unless_chosen(monkeypatch, vendor, library):
    """A fixed rule, not a timing: the same machine always trains with the same arithmetic; a block of code can
    choose the library, for itself only."""
    monkeypatch.setattr(cpu_fast_path, 'cpu_vendor', lambda: vendor)
    assert cpu_fast_path.training_library() == library
    other = 'mkl' if library == 'onednn' else 'onednn'
    with cpu_fast_path.use_training_library(other):
        assert cpu_fast_path.training_library() == other
        with cpu_fast_path.use_training_library(library):
            assert cpu_fast_path.training_library() == library
        assert cpu_fast_path.training_library() == other
    assert cpu_fast_path.training_library() == library
    with pytest.raises(ValueError, match=r"unknown training library 'MKL'; choose one of \('onednn', 'mkl'\)"):
        with cpu_fast_path.use_training_library('MKL'):
            pass


def test_cpu_vendor_is_read_from_the_machine():
    with open('/proc/cpuinfo') as cpuinfo:
        vendors = {line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('vendor_id')}
    assert vendors == {cpu_fast_path.cpu_vendor()}


def test_bf16_autocast_training_keeps_pytorchs_linears(training_library):
    """Under bf16 autocast, training takes the plain path: autocast's own bf16 Linears (oneDNN already)."""
    _, products = training_library
    ours, _ = paper_pair()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = ours.train()(torch.randn(1, 3, 64, 64))
    sum(o.float().square().mean() for o in outs).backward()
    assert not products


@needs_onednn
@pytest.mark.parametrize('pixels_per_chunk', [None, 37], ids=['default_chunks', 'many_uneven_chunks'])
@pytest.mark.parametrize('kwargs', [dict(), dict(layer_scale_init_value=0), dict(use_grn=True)],
                         ids=['layer_scale', 'no_layer_scale', 'v2_grn'])
def test_fused_inference_equals_the_autograd_path(products, kwargs, pixels_per_chunk, monkeypatch):
    if pixels_per_chunk is not None:  # 37 does not divide any stage's pixel count: a partial last chunk
        monkeypatch.setattr(cpu_fast_path, 'PIXELS_PER_CHUNK', pixels_per_chunk)
    model = randomize(ConvNeXt(arch=SMALLEST_ARCH, **kwargs)).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        fused = model(x)
    if kwargs.get('use_grn'):  # GRN's norm spans the map: V2 blocks take no chunks, only the fused Linear+GELU
        assert products == [('gelu', torch.float32)] * BLOCKS
    elif pixels_per_chunk is None:
        assert products == [('gelu', torch.float32), ('none', torch.float32)] * BLOCKS
    else:  # stage 1 alone has 2 x 16 x 20 = 640 pixels: 18 chunks per block
        assert len(products) > 2 * BLOCKS
    # Same weights and mode, autograd on and training's products in MKL: the plain path.
    with torch.enable_grad(), cpu_fast_path.use_training_library('mkl'):
        calls_before = len(products)
        plain = [o.detach() for o in model(x)]
        assert len(products) == calls_before
    assert_all_close(fused, plain)


# The bound for bfloat16 inference: 8 significant bits, 4e-3 relative rounding per value, through the
# blocks' sums and residual additions.
BF16_RTOL = 5e-2


def largest_relative_difference(tensors, references):
    return max(((a.float() - b).abs().max() / b.abs().max()).item() for a, b in zip(tensors, references))


@needs_onednn
@pytest.mark.parametrize('pixels_per_chunk', [None, 37], ids=['default_chunks', 'many_uneven_chunks'])
def test_bf16_autocast_inference_takes_the_bf16_fused_path_close_to_fp32(products, pixels_per_chunk, monkeypatch):
    if pixels_per_chunk is not None:
        monkeypatch.setattr(cpu_fast_path, 'PIXELS_PER_CHUNK', pixels_per_chunk)
    ours, paper = paper_pair()
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))  # whatever ran before
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = ours.eval()(x)
    assert products and set(products) == {('gelu', torch.bfloat16), ('none', torch.bfloat16)}
    assert all(o.dtype == torch.bfloat16 for o in outs)
    fp32 = step(paper, x, train=False)
    assert largest_relative_difference(outs, fp32) < BF16_RTOL
    # and as close to fp32 as the plain path under autocast (gradients on) is
    with torch.autocast('cpu', dtype=torch.bfloat16):
        plain = [o.detach() for o in ours(x)]
    assert largest_relative_difference(outs, fp32) < 2 * largest_relative_difference(plain, fp32)


def test_fp16_autocast_inference_takes_the_plain_path(products, paths):
    """The fused path is float32 or bfloat16; fp16 autocast keeps the plain ops and autocast's own dtype rules."""
    model = randomize(ConvNeXt(arch=SMALLEST_ARCH)).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
        model(torch.randn(1, 3, 64, 64))
    assert not products and paths == ['plain'] * BLOCKS


@needs_onednn
def test_cached_inference_weights_follow_load_state_dict_and_optimizer_steps(products):
    """The bfloat16 path's cached weight copies are rebuilt after every in-place change of the parameters: its
    outputs (and the float32 path's) follow the plain path's after ``load_state_dict`` and an optimizer step."""
    model = randomize(ConvNeXt(arch=SMALLEST_ARCH, out_indices=(0, 1, 2, 3)), seed=0).eval()
    x = torch.randn(2, 3, 64, 64)

    def fused_and_plain():
        with torch.no_grad():
            fused = list(model(x))
            with torch.autocast('cpu', dtype=torch.bfloat16):
                bf16 = list(model(x))
        with cpu_fast_path.use_training_library('mkl'):
            plain = [o.detach() for o in model(x)]  # gradients on, products in MKL: the plain path
        return fused, bf16, plain

    fused_and_plain()  # fill the caches with the first weights
    other = randomize(ConvNeXt(arch=SMALLEST_ARCH, out_indices=(0, 1, 2, 3)), seed=1)
    model.load_state_dict(other.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for change in ('load_state_dict', 'optimizer step'):
        if change == 'optimizer step':
            model.zero_grad()
            sum(o.square().mean() for o in model(x)).backward()
            optimizer.step()
        fused, bf16, plain = fused_and_plain()
        assert_all_close(fused, plain)
        assert largest_relative_difference(bf16, plain) < BF16_RTOL, change
    with torch.no_grad():  # the step did change the outputs: the comparison above saw new weights
        assert largest_relative_difference(list(other.eval()(x)), plain) > 1e-2
    assert ('none', torch.bfloat16) in products


@pytest.mark.parametrize('train', [False, True], ids=['inference', 'training'])
@pytest.mark.parametrize('kwargs', [dict(), dict(use_grn=True)], ids=['v1', 'v2'])
def test_block_gives_the_same_results_on_nchw_and_channels_last_input(train, kwargs):
    block = randomize(ConvNeXtBlock(16, **kwargs))
    x = torch.randn(2, 16, 9, 11)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        results.append(step(block, x.contiguous(memory_format=memory_format), train))
        if train or kwargs:  # CPU inference of a V1 block writes its output channels_last, the backbone's layout
            assert results[-1][0].is_contiguous(memory_format=torch.channels_last) == (
                memory_format == torch.channels_last)
    assert_all_close(results[1], results[0])


def test_grn_matches_the_papers_formula_with_gradients():
    grn = randomize(GRN(12))
    x = torch.randn(2, 5, 7, 12)
    results = []
    for formula in (grn, lambda x: reference.grn(x, grn.gamma, grn.beta)):
        grn.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_()
        out = formula(leaf)
        (out * out).mean().backward()
        results.append([out.detach(), leaf.grad, grn.gamma.grad, grn.beta.grad])
    assert_all_close(results[0], results[1])


def test_grn_computes_the_norms_of_a_bf16_map_in_float32():
    """Under bf16 autocast GRN gets bf16 maps; its norms and their ratio are computed in float32, so it equals
    the paper's formula applied in float32 to the same (bf16-valued) map, to float32 rounding."""
    grn = randomize(GRN(12))
    x = (torch.randn(2, 5, 7, 12, generator=torch.Generator().manual_seed(0)) * 3).bfloat16()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = grn(x)
    assert out.dtype == torch.float32
    with torch.no_grad():
        assert_all_close([out], [reference.grn(x.float(), grn.gamma, grn.beta)])
        assert grn.bfloat16()(x).dtype == torch.bfloat16  # a bf16 model stays bf16 (its next Linear needs it)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last], ids=['nchw', 'nhwc'])
def test_outputs_are_plain_contiguous_nchw_whatever_the_input_layout(memory_format):
    model = ConvNeXt(arch=SMALLEST_ARCH).eval()
    x = torch.randn(1, 3, 64, 96).contiguous(memory_format=memory_format)
    with torch.no_grad():
        outs = model(x)
    assert all(o.is_contiguous() for o in outs)


def test_with_cp_matches_the_paper_formulation():
    ours, paper = paper_pair()
    checkpointed = ConvNeXt(arch=SMALLEST_ARCH, out_indices=(0, 1, 2, 3), with_cp=True)
    checkpointed.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert_all_close(step(checkpointed, x, train=True), step(paper, x, train=True))


def skip_without_dynamo():
    """Skip where torch says dynamo cannot run (e.g. a Python version it does not support yet); any error of
    torch.compile elsewhere is a failure of the test."""
    import torch._dynamo
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip(f'torch.compile (dynamo) is not supported on this Python/platform (torch {torch.__version__})')


@pytest.mark.parametrize('with_cp', [False, True], ids=['plain', 'with_cp'])
def test_compile_option_matches_the_paper_formulation(with_cp):
    """Traced by dynamo and AOTAutograd as a single graph (fullgraph) without inductor's minutes of C++
    compilation; the benchmark runs inductor itself (tools/benchmark_backbone.py --compile)."""
    skip_without_dynamo()
    ours, paper = paper_pair()
    compiled = ConvNeXt(arch=SMALLEST_ARCH, out_indices=(0, 1, 2, 3), with_cp=with_cp,
                        compile=dict(backend='aot_eager', fullgraph=True))
    compiled.load_state_dict(ours.state_dict())
    assert list(dict(compiled.named_parameters())) == list(dict(ours.named_parameters()))
    x = torch.randn(2, 3, 64, 64)
    for train in (False, True):
        assert_all_close(step(compiled, x, train), step(paper, x, train))


@pytest.mark.parametrize('value', ['yes', 1, ['inductor']])
def test_bad_compile_values_are_named(value):
    with pytest.raises(ValueError, match=r'compile=.* must be True, False or a dict of torch.compile arguments'):
        ConvNeXt(arch=SMALLEST_ARCH, compile=value)


# ---- the rule, and what it falls back on
def rule_cases():
    """(case, what the block and x are, path) for every branch of block_path."""
    return [
        ('cpu inference', dict(), 'inference'),
        ('train mode without gradients (drop path may apply)', dict(train=True, grad=False), 'plain'),
        ('bf16 autocast inference', dict(autocast=torch.bfloat16), 'inference'),
        ('bf16 autocast inference of a V2 block', dict(autocast=torch.bfloat16, use_grn=True), 'plain'),
        ('fp16 autocast inference', dict(autocast=torch.float16), 'plain'),
        ('a half-precision block', dict(dtype=torch.bfloat16), 'plain'),
        ('float32 training, oneDNN', dict(train=True, grad=True, library='onednn'), 'training'),
        ('float32 training, MKL', dict(train=True, grad=True, library='mkl'), 'plain'),
        ('bf16 autocast training', dict(train=True, grad=True, autocast=torch.bfloat16, library='onednn'),
         'plain'),
        ('a frozen block under autograd', dict(grad=True, frozen=True, library='onednn'), 'inference'),
        ('another device', dict(device='meta'), 'plain'),
    ]


@needs_onednn
@pytest.mark.parametrize('case, setting, path', rule_cases(), ids=[case for case, _, _ in rule_cases()])
def test_the_rule_chooses_each_path(case, setting, path):
    block = ConvNeXtBlock(8, use_grn=setting.get('use_grn', False)).to(setting.get('dtype', torch.float32))
    block.train(setting.get('train', False))
    if setting.get('frozen'):
        block.requires_grad_(False)
    x = torch.zeros(1, 4, 4, 8, dtype=setting.get('dtype', torch.float32), device=setting.get('device', 'cpu'))
    autocast = setting.get('autocast')
    with torch.set_grad_enabled(setting.get('grad', False)), \
            torch.autocast('cpu', dtype=autocast or torch.bfloat16, enabled=autocast is not None), \
            cpu_fast_path.use_training_library(setting.get('library', 'onednn')):
        assert cpu_fast_path.block_path(block, x) == path


def test_without_working_onednn_ops_every_block_takes_the_plain_path(monkeypatch, paths):
    monkeypatch.setattr(cpu_fast_path, 'onednn_ops', lambda: None)
    ours, paper = paper_pair()
    x = torch.randn(2, 3, 64, 64)
    with cpu_fast_path.use_training_library('onednn'):
        assert_all_close(step(ours, x, train=False), step(paper, x, train=False))
        assert_all_close(step(ours, x, train=True), step(paper, x, train=True))
    assert paths == ['plain'] * 2 * BLOCKS


@needs_onednn
@pytest.mark.parametrize('problem', ['missing', 'raises', 'wrong results'])
def test_onednn_ops_that_are_missing_or_fail_are_not_used(monkeypatch, problem):
    """The private op is checked once against F.linear: absent, refused or wrong, it is not used (logged)."""
    import types
    real = torch.ops.mkldnn._linear_pointwise

    def failing(*args):
        raise RuntimeError('could not create a primitive')

    if problem == 'missing':
        monkeypatch.setattr(torch.ops, 'mkldnn', types.SimpleNamespace())
    else:
        monkeypatch.setattr(torch.ops.mkldnn, '_linear_pointwise', failing if problem == 'raises' else
                            lambda x, weight, *args: torch.zeros(x.shape[0], weight.shape[0]))
    assert cpu_fast_path.onednn_ops.__wrapped__() is None
    monkeypatch.undo()
    assert cpu_fast_path.onednn_ops.__wrapped__()[0] is real


@needs_onednn
def test_bf16_inference_without_the_weight_reorder_uses_plain_bf16_weights(monkeypatch, paths):
    def failing(*args):
        raise RuntimeError('not supported on this CPU')

    monkeypatch.setattr(torch.ops.mkldnn, '_reorder_linear_weight', failing)
    ops = cpu_fast_path.onednn_ops.__wrapped__()
    assert ops[0] is torch.ops.mkldnn._linear_pointwise and ops[1] is None
    monkeypatch.setattr(cpu_fast_path, 'onednn_ops', lambda: ops)
    ours, paper = paper_pair()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = ours.eval()(x)
    assert paths == ['inference'] * BLOCKS
    weight = cpu_fast_path.INFERENCE_WEIGHTS[ours.stages[0][0]][1][0]
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, ours.stages[0][0].pwconv1.weight.bfloat16())
    assert largest_relative_difference(outs, step(paper, x, train=False)) < BF16_RTOL


# ---- glibc's freed memory: a hook's, never a forward's
@pytest.fixture
def mallopt_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_fast_path, '_mallopt', lambda: lambda param, value: calls.append((param, value)))
    return calls


def test_no_forward_changes_the_allocator(mallopt_calls, training_library):
    ours, _ = paper_pair()
    step(ours, torch.randn(1, 3, 64, 64), train=True)
    step(ours, torch.randn(1, 3, 64, 64), train=False)
    assert not mallopt_calls


class FakeRunner:
    """What the hook reads of mmengine's Runner: the model and the logger."""

    def __init__(self, model):
        from mmengine.logging import MMLogger
        self.model = model
        self.logger = MMLogger.get_instance('cpu_training_memory_hook_test')
        self.logged = []
        self.logger.info = self.logged.append


REUSE_CALLS = [(cpu_fast_path.M_MMAP_THRESHOLD, 2**30), (cpu_fast_path.M_TRIM_THRESHOLD, 2**31 - 1)]
RESTORE_CALLS = [(cpu_fast_path.M_MMAP_THRESHOLD, 32 * 2**20), (cpu_fast_path.M_TRIM_THRESHOLD, 64 * 2**20)]


@pytest.mark.parametrize('name', ['CPUMemoryReuseHook', 'CPUTrainingMemoryHook'])
def test_cpu_memory_reuse_hook_applies_for_the_training_with_its_validations_and_gives_glibc_back(mallopt_calls,
                                                                                                   name):
    from mmengine.registry import HOOKS
    hook = HOOKS.build(dict(type=name))  # the earlier name, in configs dumped into work directories, builds it too
    assert isinstance(hook, cpu_fast_path.CPUMemoryReuseHook)
    runner = FakeRunner(ConvNeXt(arch=SMALLEST_ARCH))
    hook.before_train(runner)
    assert mallopt_calls == REUSE_CALLS
    assert 'glibc keeps freed blocks of up to 1024 MiB for reuse during training' in runner.logged[0]
    hook.before_val(runner)  # a validation inside training keeps the setting, before and after it
    hook.after_val(runner)
    assert mallopt_calls == REUSE_CALLS and len(runner.logged) == 1
    hook.after_train(runner)
    assert mallopt_calls[2:] == RESTORE_CALLS
    assert 'glibc returns freed blocks over 32 MiB to the kernel again' in runner.logged[1]
    hook.after_train(runner)  # once only
    assert len(mallopt_calls) == 4


@pytest.mark.parametrize('loop', ['val', 'test'])
def test_cpu_memory_reuse_hook_applies_for_a_test_or_validation_run_alone(mallopt_calls, loop):
    hook = cpu_fast_path.CPUMemoryReuseHook()
    runner = FakeRunner(ConvNeXt(arch=SMALLEST_ARCH))
    getattr(hook, f'before_{loop}')(runner)
    assert mallopt_calls == REUSE_CALLS
    assert f"for reuse during {dict(val='validation', test='testing')[loop]}" in runner.logged[0]
    getattr(hook, f'after_{loop}')(runner)
    assert mallopt_calls[2:] == RESTORE_CALLS and len(runner.logged) == 2


def test_cpu_memory_reuse_hook_leaves_glibc_for_a_model_on_another_device(mallopt_calls):
    with torch.device('meta'):
        runner = FakeRunner(ConvNeXt(arch=SMALLEST_ARCH))
    hook = cpu_fast_path.CPUMemoryReuseHook()
    for loop in ('train', 'test'):
        getattr(hook, f'before_{loop}')(runner)
        getattr(hook, f'after_{loop}')(runner)
    assert not mallopt_calls
    assert runner.logged == ['CPUMemoryReuseHook: the model is on meta; glibc left as it is'] * 2


def test_the_tools_reuse_freed_memory_while_they_run_a_config_that_declares_it(mallopt_calls):
    from mmengine.config import Config
    declared = Config.fromfile(CASCADE_T)  # its custom_hooks list CPUMemoryReuseHook
    with cpu_fast_path.freed_memory_reuse_as_declared(declared) as allocator:
        assert mallopt_calls == REUSE_CALLS and 'CPUMemoryReuseHook' in allocator
    assert mallopt_calls[2:] == RESTORE_CALLS
    for cfg, device in ((declared, 'cuda:0'), (Config(dict(custom_hooks=[dict(type='AutocastNetworkHook')])), 'cpu'),
                        (Config(dict()), 'cpu')):
        with cpu_fast_path.freed_memory_reuse_as_declared(cfg, device) as allocator:
            assert allocator == "glibc's own allocator thresholds"
    assert len(mallopt_calls) == 4


def test_glibcs_thresholds_are_set_and_given_back():
    assert cpu_fast_path.reuse_freed_memory() is True  # glibc: this machine's C library
    assert cpu_fast_path.restore_freed_memory_thresholds() is True
