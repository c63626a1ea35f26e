"""Shared test setup: offline, quiet, and artifacts under the configured artifact root."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# busy-waiting OpenMP threads make every torch process crawl when cores are shared (tests run several)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
