#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md ("GPU") and docs/gpu.md, on a GPU machine without network that
# has PyTorch with CUDA, timm and nvcc but none of the mm* packages. Run from the repository root, in two steps
# on the same machine (mmcv's CUDA ops build in the background between them):
#   bash tools/gpu_checks.sh backbone   # installs the carried wheels, starts mmcv's build, times the backbones
#   bash tools/gpu_checks.sh detector   # waits for mmcv, then CUDA tests, detector AMP steps, FPS, the suite
# The wheels are carried in .whl/ (see docs/gpu.md for how they were downloaded): the pure-Python mm*
# packages and their needs, setuptools < 81 (mmcv's setup.py imports pkg_resources), mmcv's source
# distribution in .whl/sdist/ and mmcv-lite (mmcv without its ops) in .whl/lite/ for the backbone-only step.
# Results go to $OUT (or /tmp/gpu_out).
set -uo pipefail
REPO=$(pwd)
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
SITE=/tmp/site
export PYTHONUNBUFFERED=1
stamp() { echo "=== [$(date +%T)] $*"; }

case ${1:-} in
backbone)
    stamp install
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .whl/*.whl .whl/build/*.whl || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/mmcv_lite \
        .whl/lite/*.whl || exit 1
    stamp "mmcv 2.1.0 with CUDA ops: build started in the background (log /tmp/mmcv_build.log)"
    setsid nohup bash -c "cd /tmp && PYTHONPATH=$SITE MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 \
        MAX_JOBS=$(nproc) python3 -m pip wheel --no-deps --no-build-isolation --no-cache-dir -w /tmp/mmcv_wheel \
        $REPO/.whl/sdist/mmcv-2.1.0.tar.gz > /tmp/mmcv_build.log 2>&1; echo \$? > /tmp/mmcv_build.rc" \
        > /dev/null 2>&1 < /dev/null &
    export PYTHONPATH=$SITE:/tmp/mmcv_lite:$REPO
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch, timm, mmengine; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'cuDNN', torch.backends.cudnn.version(), 'timm', timm.__version__, 'mmengine', mmengine.__version__)" \
        | tee -a "$OUT/gpu.txt"
    stamp "backbone tests on the GPU"
    python3 -m pytest -p no:cacheprovider tests/test_amp_numerics.py tests/test_fast_paths.py \
        tests/test_backbone.py -q -rfEs 2>&1 | tail -n 30 | tee "$OUT/tests_backbone.txt"
    stamp "backbone inference, T S B, batch 256"
    python3 tools/benchmark_backbone.py --archs tiny small base --sizes 256x224x224 --steps infer \
        --precisions fp32 bf16 fp16 --timm --reps 10 2>&1 | tee "$OUT/backbone_infer.md"
    stamp "backbone training step, T, batch 64"
    python3 tools/benchmark_backbone.py --archs tiny --sizes 64x224x224 --steps train \
        --precisions fp32 bf16 fp16 --timm --reps 10 2>&1 | tee "$OUT/backbone_train.md"
    stamp "mmcv build so far"; tail -n 3 /tmp/mmcv_build.log; ls /tmp/mmcv_build.rc 2>/dev/null
    ;;
detector)
    export PYTHONPATH=$SITE:/tmp/mmcv_lite:$REPO
    if [ ! -f /tmp/mmcv_build.rc ]; then
        stamp "while mmcv builds: compiled backbones, T, batch 256"
        python3 tools/benchmark_backbone.py --archs tiny --sizes 256x224x224 --steps infer \
            --precisions bf16 fp32 --timm --compile --reps 10 2>&1 | tee "$OUT/backbone_compiled.md"
    fi
    stamp "waiting for mmcv"
    for _ in $(seq 600); do [ -f /tmp/mmcv_build.rc ] && break; sleep 1; done
    tail -n 30 /tmp/mmcv_build.log > "$OUT/mmcv_build_tail.txt"
    if [ "$(cat /tmp/mmcv_build.rc 2>/dev/null)" != 0 ]; then
        stamp "mmcv build failed or unfinished"; cat "$OUT/mmcv_build_tail.txt"; exit 1
    fi
    stamp "mmcv built"; ls -la /tmp/mmcv_wheel
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mmcv_full /tmp/mmcv_wheel/*.whl
    export PYTHONPATH=$SITE:/tmp/mmcv_full:$REPO
    python3 -c "import torch, mmcv.ops; b = torch.rand(100, 4, device='cuda') * 50; b[:, 2:] += b[:, :2]; \
print('mmcv', mmcv.__version__, 'CUDA nms keeps', len(mmcv.ops.nms(b, torch.rand(100, device='cuda'), 0.5)[1]))"
    stamp "CUDA-only tests"
    python3 -m pytest -p no:cacheprovider tests/test_layer_decay.py tests/test_amp_numerics.py -q -rfEs 2>&1 \
        | tail -n 30 | tee "$OUT/tests_cuda.txt"
    for amp in float16 bfloat16; do
        stamp "Cascade Mask R-CNN T training step, 1333x800, AMP $amp, layer decay"
        python3 tools/benchmark_backbone.py --detector-memory configs/cascade/convnext_t_3x.py --amp $amp 2>&1 \
            | tail -n 7 | tee "$OUT/cascade_train_$amp.md"
    done
    for config in configs/mask_rcnn/convnext_t_3x.py configs/cascade/convnext_t_3x.py; do
        stamp "inference FPS $config 1333x800"
        python3 tools/benchmark.py "$config" --shape 800 1333 --device cuda 2>&1 | tail -n 2 | tee -a "$OUT/fps.txt"
        # --amp: float16 autocast around test_step on CUDA, as mmengine's TestLoop(fp16=True). (bfloat16 over a
        # whole detector fails on the H100: mmcv 2.1.0 has no bfloat16 RoIAlign CUDA kernel.)
        python3 tools/benchmark.py "$config" --shape 800 1333 --device cuda --amp 2>&1 | tail -n 2 \
            | tee -a "$OUT/fps.txt"
    done
    stamp "the whole test suite"
    timeout "${SUITE_SECONDS:-240}" python3 -m pytest -p no:cacheprovider tests -v -rs --tb=short 2>&1 \
        > "$OUT/suite.log"
    grep -E " (FAILED|ERROR)( |$)|[0-9]+ (passed|failed)" "$OUT/suite.log" | tail -n 25
    ;;
*)
    echo "usage: bash tools/gpu_checks.sh backbone|detector" >&2; exit 2 ;;
esac
