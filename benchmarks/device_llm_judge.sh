#!/usr/bin/env bash
# The LLM judge sweep (benchmarks/llm_judge_curve.py) on a GPU machine that has torch,
# transformers, peft and accelerate but not dagster nor trl: the lineage's examples and the
# count-vector baselines' scores come prepared, the base model by path.
#
# Prepare here (CPU, with the project installed):
#   python benchmarks/llm_judge_curve.py --save-inputs .bench/llm_inputs --prepare-only
#   pip install --target .bench/site --no-deps 'trl>=1.16,<2' 'datasets>=4' dill xxhash \
#       multiprocess fsspec
#   a base model folder in .bench/base (e.g. a saved Qwen2.5-0.5B-Instruct; default: SmolLM2)
# then run this script there with .bench carried; results in $OUT.
set -u
OUT=${OUT:-.bench/out}
mkdir -p "$OUT"
BASE=${BASE:-.bench/base}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} > "$OUT/machine.txt" 2>&1
PYTHONPATH=".:.bench/site${PYTHONPATH:+:$PYTHONPATH}" timeout "${BUDGET:-540}" \
  python3 benchmarks/llm_judge_curve.py --inputs .bench/llm_inputs --base-model "$BASE" \
  --device cuda --sweep-steps "${SWEEP_STEPS:-40}" --steps "${STEPS:-200}" \
  --grpo-steps "${GRPO_STEPS:-20}" --curve-every 10 --dev 100 --generate 100 \
  > "$OUT/llm_judge_curve.log" 2>&1
cp benchmarks/results/llm_judge_curve.* "$OUT/" 2>/dev/null
tail -n 40 "$OUT/llm_judge_curve.log"
