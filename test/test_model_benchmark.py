"""The model benchmark runs end to end on the CPU and reports positive figures for every method asked for."""
from __future__ import annotations

import argparse
import json

import pytest

from rgbd_fusion_seg.models import UnknownMethodError
from rgbd_fusion_seg.offline import model_benchmark as benchmark

FIGURES = ("params_m", "gflops", "gmacs", "latency_ms_p50", "latency_ms_p90", "train_images_per_s")


def parse(argv):
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.slow
def test_benchmark_reports_positive_figures(tmp_path, capsys):
    out = tmp_path / "bench" / "figures.json"
    args = parse(
        [
            "--methods", "rgb", "late",
            "--device", "cpu",
            "--size", "32", "48",
            "--iters", "2",
            "--warmup", "1",
            "--train-batch", "2",
            "--train-size", "32", "32",
            "--train-iters", "1",
            "--train-warmup", "0",
            "--json", str(out),
        ]
    )
    assert benchmark.run(args) == 0
    printed = capsys.readouterr().out
    assert "multiply-add counts as 2 FLOPs" in printed
    table = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("|")}
    assert {"rgb", "late"} <= set(table)

    figures = json.loads(out.read_text())
    assert figures["settings"]["size"] == [32, 48] and figures["settings"]["device"] == "cpu"
    by_method = {r["method"]: r for r in figures["results"]}
    assert set(by_method) == {"rgb", "late"}
    for method, result in by_method.items():
        assert "error" not in result, result
        for key in FIGURES:
            assert isinstance(result[key], float) and result[key] > 0, (method, key, result.get(key))
        assert result["gmacs"] == pytest.approx(result["gflops"] / 2)
        assert result["latency_ms_p90"] >= result["latency_ms_p50"]
        # every printed row carries the same numbers as the JSON
        assert f"{result['params_m']:.2f}" in table[method]
    # late fusion is two U-Nets: about twice the baseline's size and compute
    assert by_method["late"]["params_m"] == pytest.approx(2 * by_method["rgb"]["params_m"], rel=0.01)
    assert by_method["late"]["gflops"] == pytest.approx(2 * by_method["rgb"]["gflops"], rel=0.05)


def test_benchmark_refuses_unknown_method_before_measuring():
    with pytest.raises(UnknownMethodError, match="nope"):
        benchmark.run(parse(["--methods", "rgb", "nope", "--device", "cpu"]))


def test_flop_count_includes_attention_on_the_cpu():
    import torch

    class CrossAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, rgb, aux):
            return self.attention(rgb, aux, aux, need_weights=False)[0]

    model = CrossAttention().eval()
    tokens, dim = 10, 16
    rgb, aux = torch.randn(1, tokens, dim), torch.randn(1, tokens, dim)
    projections = 4 * (2 * tokens * dim * dim)  # q, k, v and output projections
    attention = 2 * (2 * tokens * tokens * dim)  # scores and weighted sum
    assert benchmark.count_flops(model, rgb, aux) == projections + attention


def test_a_failing_method_is_reported_and_the_others_still_measured(monkeypatch, capsys, tmp_path):
    def fake_measure(method, args, device):
        if method == "late":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"method": method, "params_m": 1.0, "gflops": 2.0, "gmacs": 1.0, "latency_ms_p50": 3.0, "latency_ms_p90": 4.0}

    monkeypatch.setattr(benchmark, "benchmark_method", fake_measure)
    out = tmp_path / "figures.json"
    assert benchmark.run(parse(["--methods", "rgb", "late", "--device", "cpu", "--json", str(out)])) == 1
    printed = capsys.readouterr().out
    assert "# late failed: RuntimeError: CUDA out of memory" in printed
    assert any(line.startswith("| rgb ") and "3.00" in line for line in printed.splitlines())
    results = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert "error" in results["late"] and results["rgb"]["latency_ms_p50"] == 3.0


def test_rsfnet_pairs_are_measured_in_deploy_form_beside_table_iii(capsys, tmp_path):
    out = tmp_path / "rsfnet.json"
    args = parse(["--rsfnet", "resnet50-resnet18", "--device", "cpu", "--size", "32", "32", "--iters", "1",
                  "--warmup", "0", "--train-iters", "0", "--json", str(out)])
    assert benchmark.run(args) == 0
    printed = capsys.readouterr().out
    [result] = json.loads(out.read_text())["results"]
    assert result["method"] == "rsfnet resnet50-resnet18"
    assert json.loads(out.read_text())["settings"]["num_classes"] == 9  # MFNet's, like the paper's table
    # the merged KxK blocks have fewer parameters than the training branches; within 1 % of the paper's 44.53 M
    assert result["deploy_params_m"] < result["params_m"]
    assert result["deploy_params_m"] == pytest.approx(benchmark.PAPER_TABLE_III["resnet50-resnet18"]["params_m"], rel=0.01)
    [row] = [line for line in printed.splitlines() if line.startswith("| resnet50-resnet18 |")]
    assert f"{result['deploy_params_m']:.2f}" in row and "44.53" in row and "64.69" in row and "81.36" in row


def test_rsfnet_unknown_encoder_is_refused_before_measuring():
    with pytest.raises(ValueError, match="resnet7"):
        benchmark.run(parse(["--rsfnet", "resnet50-resnet18", "resnet7-resnet18", "--device", "cpu"]))
    with pytest.raises(ValueError, match="exclude each other"):  # --methods would be silently ignored
        benchmark.run(parse(["--rsfnet", "--methods", "rgb", "--device", "cpu"]))
