"""CPUAmpOptimWrapper (convnext_mm/mixed_precision.py): bfloat16 mixed-precision training on the CPU, the network's
layers under autocast and the rest (losses, box coding, NMS, RoIAlign) in float32."""
import copy

import pytest
import torch
from mmengine.optim import build_optim_wrapper

from mmengine.config import Config

from convnext_mm.mixed_precision import CPUAmpOptimWrapper
from project import config_path, load_tool
from tiny_models import build_model, tiny_detection_batch

DEMO = config_path('demo/cascade_convnext_t_demo.py')
WIDTH = 16
DIMS = [8, 16, 32, 64]


def tiny_cascade():
    """The demo's Cascade Mask R-CNN with a 4-block backbone and 16-channel neck and heads, random weights."""
    cfg = Config.fromfile(DEMO)
    cfg.default_scope = 'mmdet'
    model = cfg.model
    model.backbone.update(arch=dict(depths=[1, 1, 1, 1], dims=DIMS), init_cfg=None, drop_path_rate=0.)
    model.neck.update(in_channels=DIMS, out_channels=WIDTH)
    model.rpn_head.update(in_channels=WIDTH, feat_channels=WIDTH)
    model.roi_head.bbox_roi_extractor.out_channels = WIDTH
    model.roi_head.mask_roi_extractor.out_channels = WIDTH
    for head in model.roi_head.bbox_head:
        head.update(in_channels=WIDTH, conv_out_channels=WIDTH, fc_out_channels=WIDTH)
    model.roi_head.mask_head.update(in_channels=WIDTH, conv_out_channels=WIDTH)
    torch.manual_seed(0)
    return cfg, build_model(cfg).train()


def detection_batch():
    """Two 64x64 images with boxes and masks of the demo's three classes."""
    batch = tiny_detection_batch(num_images=2)
    for sample in batch['data_samples']:
        sample.gt_instances.labels %= 3
    return batch


def record_dtypes(model):
    """{module kind: dtype of its output} of the first call of the backbone's first Linear, its first LayerNorm
    and the first RoIAlign."""
    seen = {}

    def hook(kind):
        def record(module, args, output):
            seen.setdefault(kind, (args[0].dtype, output.dtype))
        return record

    backbone = model.backbone
    backbone.stages[0][0].pwconv1.register_forward_hook(hook('linear'))
    backbone.stages[0][0].norm.register_forward_hook(hook('layer_norm'))
    model.roi_head.bbox_roi_extractor[0].roi_layers[0].register_forward_hook(hook('roi_align'))
    return seen


def test_a_detector_trains_with_its_layers_in_bf16_and_roialign_in_float32():
    cfg, model = tiny_cascade()
    optim_cfg = dict(cfg.optim_wrapper, type='CPUAmpOptimWrapper', loss_scale='dynamic')
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    assert isinstance(optim_wrapper, CPUAmpOptimWrapper)
    seen = record_dtypes(model)
    before = [p.detach().clone() for p in model.parameters()]
    log_vars = model.train_step(detection_batch(), optim_wrapper)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log_vars.values())
    # the MLP's Linear in bf16 (autocast's oneDNN product); LayerNorm output in bf16 (its statistics are float32
    # inside PyTorch's kernel); mmcv's RoIAlign on float32 features (its CPU kernel takes no other)
    assert seen['linear'][1] == torch.bfloat16
    assert seen['roi_align'][0] == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights, fp32 gradients
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # outside the optim context nothing is in autocast: a plain forward is float32 throughout
    seen.clear()
    with torch.no_grad():
        model.extract_feat(torch.randn(1, 3, 64, 64))
    assert seen['linear'][1] == torch.float32


def test_bf16_losses_are_close_to_float32():
    """The same step's losses in fp32 (OptimWrapper) and bf16 (CPUAmpOptimWrapper) from the same weights."""
    losses = {}
    for wrapper in ('OptimWrapper', 'CPUAmpOptimWrapper'):
        cfg, model = tiny_cascade()
        optim_wrapper = build_optim_wrapper(model, dict(cfg.optim_wrapper, type=wrapper))
        torch.manual_seed(1)  # the samplers' draws
        with optim_wrapper.optim_context(model):
            loss, _ = model.parse_losses(model(**model.data_preprocessor(detection_batch(), True), mode='loss'))
        losses[wrapper] = loss.item()
    assert losses['CPUAmpOptimWrapper'] == pytest.approx(losses['OptimWrapper'], rel=2e-2)


def test_a_model_without_extract_feat_runs_its_whole_step_in_autocast():
    model = torch.nn.Linear(8, 4)
    optim_wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with optim_wrapper.optim_context(model):
        assert model(torch.randn(2, 8)).dtype == torch.bfloat16
    assert model(torch.randn(2, 8)).dtype == torch.float32


def test_float16_is_refused_by_name():
    model = torch.nn.Linear(8, 4)
    with pytest.raises(ValueError, match=r"CPUAmpOptimWrapper trains in bfloat16; got dtype='float16'"):
        CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), dtype='float16')


def test_a_deep_copy_trains_with_its_own_weights():
    """A model copied after a CPUAmpOptimWrapper step (an EMA or teacher model) computes its bf16 step with its own
    weights: the copy's losses follow the copy's parameters, not the original's."""
    cfg, model = tiny_cascade()
    optim_wrapper = build_optim_wrapper(model, dict(cfg.optim_wrapper, type='CPUAmpOptimWrapper'))
    model.train_step(detection_batch(), optim_wrapper)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for param in copied.neck.parameters():
            param.zero_()  # the neck's outputs are all zero: the RPN sees nothing
    seen = {}
    copied.neck.register_forward_hook(lambda _, __, outputs: seen.setdefault('neck', outputs))
    with optim_wrapper.optim_context(copied):
        copied(**copied.data_preprocessor(detection_batch(), True), mode='loss')
    assert all(out.dtype == torch.float32 and not out.any() for out in seen['neck'])


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the machine without a GPU')
def test_train_tool_amp_on_a_cpu_selects_the_cpu_wrapper():
    train = load_tool('train')
    cfg = train.build_config(train.parse_args([DEMO, '--amp']))
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
    _, model = tiny_cascade()
    assert isinstance(build_optim_wrapper(model, cfg.optim_wrapper), CPUAmpOptimWrapper)
