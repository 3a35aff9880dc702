#!/usr/bin/env bash
# GPU benchmark suite: installs the cuda12 extra and runs every benchmark with GPU-sized settings.
# Goals on one H100: >= 10M env-steps/s PPO training on TradingEnv (sweep_throughput),
# >= 100M env-steps/s raw env stepping (env_scaling at >= 1M envs).
# Usage (repo root, inside a venv):  bash benchmarks/gpu.sh [--no-install] [--with-sb3]
# CSVs land in results/bench/gpu/; the console log in results/bench/gpu/gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
INSTALL=1
SB3=0
for a in "$@"; do
  case "$a" in
    --no-install) INSTALL=0 ;;
    --with-sb3) SB3=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
OUT=results/bench/gpu
mkdir -p "$OUT"
if [ "$INSTALL" = 1 ]; then
  "$PY" -m pip install -e ".[cuda12]"
  if [ "$SB3" = 1 ]; then
    # SB3 runs on torch CPU: take the CPU wheel, never a CUDA torch
    "$PY" -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    "$PY" -m pip install stable-baselines3 gymnasium
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # memory.py reads the real peak, not a preallocation
"$PY" - <<'PY'
import jax
devs = jax.devices()
assert devs[0].platform == "gpu", f"no GPU visible to JAX: {devs}"
print("devices:", devs)
PY
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  echo "== env scaling (raw stepping) =="
  "$PY" benchmarks/env_scaling.py --envs 1 64 4096 65536 262144 1048576 4194304 \
      --budget 200000000 --max-steps 1000 --csv "$OUT/env_scaling.csv"
  echo "== PPO training sweep (TradingEnv, sharded over all GPUs) =="
  "$PY" benchmarks/sweep_throughput.py --envs 4096 --seeds 8 --weights 0 0.5 1 2 \
      --num-steps 32 --updates 20 --csv "$OUT/sweep_throughput.csv"
  "$PY" benchmarks/sweep_throughput.py --envs 16384 --seeds 4 --weights 0 0.5 1 2 \
      --num-steps 32 --updates 10 --csv "$OUT/sweep_throughput_large.csv"
  echo "== the closed loop vs its parts (study_gpu and paper sizes) =="
  "$PY" benchmarks/loop_vs_ppo.py experiment=study_gpu loop.num_cycles=1 --repeats 1 \
      --csv "$OUT/loop_vs_ppo_study_gpu.csv"
  "$PY" benchmarks/loop_vs_ppo.py experiment=paper loop.num_cycles=1 --repeats 1 \
      --csv "$OUT/loop_vs_ppo_paper.csv"
  echo "== memory (4096 envs x 64 seeds) =="
  "$PY" benchmarks/memory.py --envs 4096 --seeds 64 --updates 2 8 --csv "$OUT/memory.csv"
  if [ "$SB3" = 1 ]; then
    echo "== SB3 (torch CPU) vs JAX PPO on the GPU =="
    "$PY" benchmarks/sb3_compare.py --envs 8 256 4096 --steps 1048576 --skip sb3_gymnax --split \
        --csv "$OUT/sb3_compare.csv"
  fi
} 2>&1 | tee "$OUT/gpu.log"
