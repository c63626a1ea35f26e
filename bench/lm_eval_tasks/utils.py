"""Loads this folder's task data for lm-eval (`custom_dataset: !function utils.load` in the task YAMLs).

The data file is named in the YAML (`dataset_kwargs: {data_file: ...}`) and read next to this file, so the tasks
work from any working directory (`--include_path bench/lm_eval_tasks`), offline: no Hub, no datasets cache.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(data_file: str, split: str = "test", **_metadata):
    """{split: Dataset} of one JSONL file in this folder (lm-eval passes its task metadata as keywords too)."""
    import datasets

    path = HERE / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
