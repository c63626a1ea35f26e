cd /work/main
export QWEN_W4_HOME=/work/main HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 OMP_WAIT_POLICY=PASSIVE
date
/usr/bin/time -f "%e s" .venv/bin/python -m bench --models tiny-text,tiny-text-gptq,artifacts/rtn/tiny-text-gptq,artifacts/default/tiny-text-gptq,tiny-text-gguf,tiny-vl,tiny-vl-gptq,artifacts/rtn/tiny-vl-gptq,artifacts/default/tiny-vl-gptq,tiny-vl-gguf \
  --cpu-int4 w4a8,w4a16 --quality --concurrency 1 --prompts 2 --input-len 64 --output-len 32 --seed 1 \
  --no-progress --out reports/cpu-2026-12-07-quality-epyc/bench
echo bench rc=$?
date
