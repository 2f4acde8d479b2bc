#!/usr/bin/env bash
# The line_transformer quality benchmark's training step on a GPU machine that has torch and
# transformers but not the rest of logfit: the three variants side by side on one GPU (a 22M
# parameter encoder leaves it mostly idle), each fold's scores appended to $OUT as it ends.
# Needs .bench/line_rows.json (`line_transformer_quality.py prepare`) and .bench/minilm (the
# packaged all-MiniLM-L6-v2, stored as fp16 to travel; trained in fp32 with bf16 autocast).
set -u
OUT=${OUT:-.bench/out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-420}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), 'bf16', torch.cuda.is_bf16_supported())"
  nproc
} > "$OUT/machine.txt" 2>&1
for variant in message-128 whole-line-128 message-64; do
  timeout "$BUDGET" python3 benchmarks/line_transformer_quality.py train --device cuda \
    --base-model .bench/minilm --variant "$variant" --out "$OUT/$variant.jsonl" \
    > "$OUT/$variant.log" 2>&1 &
done
wait
timeout 60 python3 benchmarks/line_transformer_quality.py speed --device cuda \
  --base-model .bench/minilm --rows 2048 > "$OUT/speed-cuda.json" 2> "$OUT/speed-cuda.log"
tail -n 3 "$OUT"/*.log
cat "$OUT/machine.txt" "$OUT/speed-cuda.json"
wc -l "$OUT"/*.jsonl
