"""What every recipe here declares beyond its host's runtime: the package's import and the hooks its runs use,
each scoped to the run (a config that lists none of them runs as mmdet's or mmseg's own configs do).

- RandomStateHook: checkpoints carry the random generators, so --resume continues the same draws.
- SafeCheckpointHook: checkpoints of plain data, which --resume reads with torch's safe loader (torch >= 2.6).
- AutocastNetworkHook: with val_cfg/test_cfg.fp16=True, the layers in bf16/fp16 and the post-processing in fp32.
- BackboneWidthCheckHook: a neck or head written for another ConvNeXt width stops at the start with what to write.
- CPUMemoryReuseHook: on a CPU, glibc keeps freed blocks for reuse while training, validating and testing (no
  effect on a GPU).

Each recipe also writes its checkpoints atomically (to a temporary file, then renamed: a run killed mid-save leaves
no truncated file) with default_hooks.checkpoint.backend_args=dict(backend='atomic_local'), set beside the host's
default_hooks it inherits.
"""
custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)
custom_hooks = [
    dict(type='RandomStateHook'),
    dict(type='SafeCheckpointHook'),
    dict(type='AutocastNetworkHook'),
    dict(type='BackboneWidthCheckHook'),
    dict(type='CPUMemoryReuseHook'),
]
