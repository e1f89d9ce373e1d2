"""python -m bench gpu --quick on a machine without CUDA: every section runs once at toy sizes
on the CPU (so the GPU benchmark cannot rot), and only skipped rows are recorded."""

import json

import pytest
import torch

from bench.__main__ import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")
def test_the_dry_run_runs_every_section_and_records_skipped_rows(tmp_path, caplog):
    assert main(["gpu", "--quick", "--results", str(tmp_path / "r"), "--work", str(tmp_path)]) == 0
    for bench in ("gpu-data", "gpu-decode", "gpu-fidelity", "gpu-model", "gpu-embed", "gpu-probe", "gpu-knn"):
        rows = [json.loads(line) for line in (tmp_path / "r" / f"{bench}.jsonl").read_text().splitlines()]
        assert [r["skipped"] for r in rows] == ["no CUDA device on this machine"]
        assert f"{bench} " in caplog.text  # the dry run measured it
    assert "gpu-probe torch vs scikit-learn" in caplog.text and "failed" not in caplog.text
    assert "gpu-data ImageNet-like JPEGs, generated and sharded" in caplog.text
    for decoder in ("nvimgcodec", "dali", "torchvision", "torchvision-cpu"):  # each measured, none skipped
        assert f"gpu-decode {decoder}: shards to model-ready batches [cpu]: " in caplog.text
        assert f"gpu-embed vits16_800ep, {decoder} [cpu]: " in caplog.text
        assert f"gpu-fidelity {decoder} [cpu]: {{'images': 8" in caplog.text
    assert "gpu-decode preprocessing alone" in caplog.text and "[cpu]: skipped" not in caplog.text
    assert "GPU, model" in (tmp_path / "r" / "REPORT.md").read_text()
