"""The model benchmark runs end to end on the CPU and reports positive figures for every method asked for."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from rgbd_fusion_seg.models import UnknownMethodError
from rgbd_fusion_seg.offline import model_benchmark as benchmark
from rgbd_fusion_seg.offline.benchmarking import count_flops

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
    assert count_flops(model, rgb, aux) == projections + attention


def test_a_failing_method_is_reported_and_the_others_still_measured(monkeypatch, capsys, tmp_path):
    def fake_measure(job, args, device):
        if job.method == "late":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"method": job.name, "params_m": 1.0, "gflops": 2.0, "gmacs": 1.0, "latency_ms_p50": 3.0, "latency_ms_p90": 4.0}

    monkeypatch.setattr(benchmark, "benchmark_method", fake_measure)
    out = tmp_path / "figures.json"
    assert benchmark.run(parse(["--methods", "rgb", "late", "--device", "cpu", "--json", str(out)])) == 1
    printed = capsys.readouterr().out
    assert "# late failed: RuntimeError: CUDA out of memory" in printed
    assert any(line.startswith("| rgb ") and "3.00" in line for line in printed.splitlines())
    results = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert "error" in results["late"] and results["rgb"]["latency_ms_p50"] == 3.0


def test_published_configurations_are_measured_beside_their_figures(capsys, tmp_path, monkeypatch):
    from rgbd_fusion_seg.models.base import PublishedFigures
    from rgbd_fusion_seg.models.methods.rgb_baseline import RGBBaseline

    # a published figure at a small size, so that the test measures quickly; the real ones are the methods'
    paper = PublishedFigures(source="a paper, Table 9", size=(32, 48), num_classes=5, params_m=10.0, gmacs=1.0,
                             label="small", note="its FLOPs are MACs", fps=(("RTX 2080Ti", 81.36),))
    monkeypatch.setattr(RGBBaseline, "published", (paper,))
    out = tmp_path / "published.json"
    args = parse(["--published", "rgb", "--device", "cpu", "--iters", "1", "--warmup", "0", "--train-iters", "0",
                  "--json", str(out)])
    assert benchmark.run(args) == 0
    printed = capsys.readouterr().out
    [result] = json.loads(out.read_text())["results"]
    assert result["method"] == "rgb small"
    assert json.loads(out.read_text())["settings"]["num_classes"] == [5]  # the configuration's own
    [row] = [line for line in printed.splitlines() if line.startswith("| rgb small |") and "classes" in line]
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[1] == "32x48, 5 classes" and cells[3] == "10.00" and cells[6] == "1.00"
    assert cells[2] == f"{result['deploy_params_m']:.2f}"
    assert cells[4] == f"{100 * (result['deploy_params_m'] - 10.0) / 10.0:+.1f} %"
    assert "81.36 (RTX 2080Ti)" in row and "a paper, Table 9" in row
    assert "# its FLOPs are MACs" in printed


def test_every_published_configuration_builds_with_its_options():
    from rgbd_fusion_seg.models import available_methods, method_class

    jobs = benchmark._jobs(parse(["--published"]))
    assert jobs and all(job.published is not None for job in jobs)
    assert {job.method for job in jobs} == {m for m in available_methods() if method_class(m).published}
    for job in jobs:
        with torch.device("meta"):
            benchmark._build(job)  # the published options are options the method takes


def test_published_and_option_arguments_are_checked_before_measuring(monkeypatch):
    from rgbd_fusion_seg.models.methods.rgb_baseline import RGBBaseline

    monkeypatch.setattr(RGBBaseline, "published", ())
    with pytest.raises(ValueError, match="no published size"):
        benchmark.run(parse(["--published", "rgb", "--device", "cpu"]))
    with pytest.raises(ValueError, match="no --methods or --option"):  # they would be silently ignored
        benchmark.run(parse(["--published", "--methods", "rgb", "--device", "cpu"]))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        benchmark.run(parse(["--methods", "rgb", "--option", "width", "--device", "cpu"]))
    with pytest.raises(UnknownMethodError, match="no option"):
        benchmark._build(benchmark._jobs(parse(["--methods", "rgb", "--option", "width=3"]))[0])


def test_scan_benchmark_prints_every_backend_present(capsys, tmp_path, monkeypatch):
    from rgbd_fusion_seg.offline import scan_benchmark

    monkeypatch.setattr(scan_benchmark, "DEFAULT_SIZES", (("tiny", 1, 8, 64, 4, 1),))  # quick to time
    out = tmp_path / "scan.json"
    assert benchmark.run(parse(["--scan", "--device", "cpu", "--iters", "1", "--json", str(out)])) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["scan"]
    assert {row["backend"] for row in rows} >= {"sequential", "mambapy"}
    assert all(row["forward_ms"] > 0 for row in rows if row["backend"] in ("sequential", "mambapy"))
    assert sum(line.startswith("| tiny") for line in printed.splitlines()) == len(rows)


@pytest.mark.slow
def test_backends_side_by_side_in_one_run(tmp_path, capsys):
    from rgbd_fusion_seg.core.engine import cpu_has_native_bf16

    out = tmp_path / "backends.json"
    args = parse(["--backends", "eager", "fast", "bf16", "fp16", "onnxruntime", "tensorrt", "--methods", "rgb",
                  "--device", "cpu", "--size", "32", "48", "--frame", "40", "56", "--iters", "2", "--warmup", "1",
                  "--json", str(out)])
    assert benchmark.run(args) == 0
    printed = capsys.readouterr().out
    [figures] = json.loads(out.read_text())["backends"]
    rows = {row["row"]: row for row in figures["rows"]}
    assert list(rows) == ["eager", "fast", "bf16", "fp16", "onnxruntime", "tensorrt"]
    assert rows["eager"]["agreement"] == 1.0 and rows["fast"]["agreement"] == 1.0  # the fast path is exact
    assert rows["onnxruntime"]["agreement"] >= 0.999
    assert rows["onnxruntime"]["backend"] == "onnxruntime (CPUExecutionProvider)"
    assert "a CPU emulates half precision" in rows["fp16"]["not_here"]
    assert rows["tensorrt"]["not_here"] == "TensorRT runs on CUDA only"
    if cpu_has_native_bf16():
        assert rows["bf16"]["agreement"] > 0.9  # bf16 rounds some logits: near, not equal
    else:
        assert "no bf16 instructions" in rows["bf16"]["not_here"]
    for row in (r for r in rows.values() if "not_here" not in r):
        assert row["p90_ms"] >= row["p50_ms"] > 0 and row["images_per_s"] > 0 and row["peak_mib"] > 0
        assert f"\n{row['row']:<12} " in printed
    assert figures["settings"]["cpu_peak_gflops"] > 0 and "fp32 peak through oneDNN" in printed


def test_an_unknown_backend_row_is_refused_with_the_rows():
    with pytest.raises(ValueError, match=r"unknown row warp.*rows: eager, fast, compile"):
        benchmark.run(parse(["--backends", "warp", "--methods", "rgb", "--device", "cpu"]))
