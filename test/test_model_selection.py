"""Model selection without ROS: which file a configuration serves, each file read once, and when to load."""
from collections import Counter
from dataclasses import replace

import pytest

from rgbd_fusion_seg.core.checkpoint import CheckpointError
from rgbd_fusion_seg.serving import parameters as params
from rgbd_fusion_seg.serving.model_serving import CheckpointSummary, read_checkpoint_summary
from rgbd_fusion_seg.serving.model_selection import choose_model, needs_load
from ros_helpers import make_checkpoint


class FakeFiles:
    """Checkpoint files in a folder (real, empty files, so existence checks work) with the summaries they hold."""

    def __init__(self, folder):
        self.folder = folder
        self.summaries: dict[str, CheckpointSummary | Exception] = {}
        self.reads = Counter()

    def add(self, name, method="early", modality="depth", weights_problem=None, broken=None) -> str:
        path = str(self.folder / name)
        (self.folder / name).write_bytes(b"")
        self.summaries[path] = broken or CheckpointSummary(path, method, 4, modality, "m", method != "rgb",
                                                           weights_problem)
        return path

    def read(self, path):
        self.reads[path] += 1
        found = self.summaries.get(str(path)) or CheckpointError(f"checkpoint {path} does not exist")
        if isinstance(found, Exception):
            raise found
        return found


def config(**values):
    return {**params.defaults(), "device": "cpu", **values}


@pytest.fixture
def files(tmp_path):
    return FakeFiles(tmp_path)


def choose(files, cfg, changed, serving=True, startup=False):
    return choose_model(cfg, set(changed), serving=serving, startup=startup, read=files.read)


def test_a_runtime_checkpoint_matching_fusion_method_is_read_once(files):
    """The old node read this file three times on the executor thread for one request."""
    early = files.add("early.pt", "early")
    choice = choose(files, config(checkpoint=early, fusion_method="early"), {"checkpoint", "fusion_method"})
    assert choice.summary.path == early and choice.runtime.device == "cpu"
    assert files.reads == {early: 1}


def test_fusion_method_serves_the_method_file_beside_the_checkpoint(files):
    early, mid = files.add("early.pt", "early"), files.add("mid.pt", "mid")
    choice = choose(files, config(checkpoint=early, fusion_method="mid"), {"fusion_method"})
    assert choice.summary.method == "mid" and choice.summary.path == mid
    assert files.reads == {early: 1, mid: 1}


def test_fusion_method_looks_in_checkpoint_dir(files, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    late = FakeFiles(other)
    late.summaries, late.reads = files.summaries, files.reads
    path = late.add("late.pt", "late")
    choice = choose(files, config(checkpoint_dir=str(other), fusion_method="late"), {"fusion_method"})
    assert choice.summary.path == path


def test_fusion_method_needs_a_folder_and_its_file(files):
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        choose(files, config(fusion_method="mid"), {"fusion_method"})
    early = files.add("early.pt", "early")
    with pytest.raises(ValueError, match=r"fusion_method 'late': no checkpoint .*late.pt"):
        choose(files, config(checkpoint=early, fusion_method="late"), {"fusion_method"})


def test_a_broken_checkpoint_does_not_block_the_method_file_fusion_method_picks(files):
    broken = files.add("broken.pt", broken=CheckpointError("checkpoint broken.pt is a text file"))
    mid = files.add("mid.pt", "mid")
    choice = choose(files, config(checkpoint=broken, fusion_method="mid"), {"fusion_method"})
    assert choice.summary.path == mid
    # ...but a broken checkpoint set in this very request is refused, read once.
    with pytest.raises(CheckpointError, match="is a text file"):
        choose(files, config(checkpoint=broken, fusion_method="mid"), {"checkpoint"})
    assert files.reads[broken] == 2  # once per decision


def test_a_runtime_checkpoint_of_another_method_than_fusion_method_is_refused(files):
    early = files.add("early.pt", "early")
    files.add("mid.pt", "mid")
    with pytest.raises(ValueError, match="holds method 'early' but fusion_method is 'mid'"):
        choose(files, config(checkpoint=early, fusion_method="mid"), {"checkpoint"})
    # Both in one request: fusion_method picks mid.pt beside it.
    assert choose(files, config(checkpoint=early, fusion_method="mid"), {"checkpoint", "fusion_method"})


def test_checks_keep_their_order_method_modality_weights(files):
    misfit = files.add("se.pt", "early", modality="depth", weights_problem="weights do not fit method 'early'")
    with pytest.raises(CheckpointError, match="holds method 'early', not 'se'"):
        choose(files, config(checkpoint=misfit, fusion_method="se"), {"fusion_method"})
    with pytest.raises(CheckpointError, match="trained on depth .* but modality is 'thermal'"):
        choose(files, config(checkpoint=misfit, modality="thermal"), {"modality"})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        choose(files, config(checkpoint=misfit), {"checkpoint"})


def test_an_rgb_only_checkpoint_ignores_the_modality(files):
    rgb = files.add("rgb.pt", "rgb", modality="depth")
    assert choose(files, config(checkpoint=rgb, modality="thermal"), {"checkpoint", "modality"})


def test_no_checkpoint_is_idle_at_start_and_refused_while_serving(files):
    assert choose(files, config(), {"checkpoint", "fusion_method"}, serving=False, startup=True) is None
    assert choose(files, config(), {"checkpoint"}, serving=False) is None
    with pytest.raises(ValueError, match="would leave nothing to serve"):
        choose(files, config(), {"checkpoint"}, serving=True)


def test_a_value_refused_at_start_blocks_every_model_change(files):
    early = files.add("early.pt", "early")
    with pytest.raises(ValueError, match=r"precision: .*'fp64'.*\(set precision too, in the same request\)"):
        choose(files, config(checkpoint=early, precision="fp64"), {"checkpoint"})
    assert choose(files, config(checkpoint=early, precision="fp32"), {"checkpoint", "precision"})


def test_needs_load_only_for_another_target_or_a_file_asked_for_again(files):
    early = files.add("early.pt", "early")
    choice = choose(files, config(checkpoint=early), {"checkpoint"})
    assert needs_load(choice, None, {"device"})
    assert not needs_load(choice, choice.target, {"modality"})
    assert needs_load(choice, choice.target, {"checkpoint"})
    assert needs_load(choice, (choice.target[0], replace(choice.runtime, device="cuda"), ()), {"device"})


def test_read_checkpoint_summary_reads_a_real_file_once(tmp_path):
    path = make_checkpoint(tmp_path / "mid.pt", "mid", num_classes=4)
    summary = read_checkpoint_summary(path)
    assert (summary.method, summary.num_classes, summary.modality, summary.uses_aux) == ("mid", 4, "depth", True)
    assert summary.weights_problem is None and summary.require(method="mid", modality="depth") is summary
    misfit = read_checkpoint_summary(make_checkpoint(tmp_path / "misfit.pt", "mid", num_classes_in_weights=6))
    assert "weights do not fit method 'mid' with 4 classes" in misfit.weights_problem


def test_the_backend_follows_the_file_and_refuses_what_it_cannot_serve(files):
    mid, mid_onnx = files.add("mid.pt", "mid"), files.add("exported.onnx", "mid")
    assert choose(files, config(checkpoint=mid), {"checkpoint"}).runtime.backend_for(mid) == "torch"
    assert choose(files, config(checkpoint=mid_onnx), {"checkpoint"}).runtime.backend_for(mid_onnx) == "onnxruntime"
    onnx_for_pt = choose(files, config(checkpoint=mid, backend="onnxruntime"), {"checkpoint", "backend"})
    assert onnx_for_pt.runtime.backend_for(mid) == "onnxruntime"  # exported when it loads
    with pytest.raises(CheckpointError, match=r"exported.onnx is an exported ONNX file.*set backend to onnxruntime"):
        choose(files, config(checkpoint=mid_onnx, backend="torch"), {"backend"})
    with pytest.raises(CheckpointError, match=r"mask and confidence only; precision bf16 and compile need backend torch"):
        choose(files, config(checkpoint=mid, backend="onnxruntime", precision="bf16", compile=True), {"backend"})
    sccosf = files.add("sccosf.pt", "sccosf")  # every method exports; only its fused image needs torch
    assert choose(files, config(checkpoint=sccosf, backend="onnxruntime"), {"backend"}).runtime.backend_for(sccosf) == "onnxruntime"
    with pytest.raises(CheckpointError, match=r"the fused output need backend torch"):
        choose(files, config(checkpoint=sccosf, backend="onnxruntime", **{"outputs.fused_image": True}), {"backend"})


def test_an_onnx_cache_dir_that_cannot_take_the_export_is_refused_before_it(files, tmp_path):
    mid = files.add("mid.pt", "mid")
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("")
    with pytest.raises(CheckpointError, match=r"onnx_cache_dir: folder .*not_a_folder is a file, not a folder"):
        choose(files, config(checkpoint=mid, backend="onnxruntime", onnx_cache_dir=str(a_file)), {"backend"})
    assert choose(files, config(checkpoint=mid, backend="onnxruntime", onnx_cache_dir=str(tmp_path / "cache")),
                  {"backend"}).runtime.onnx_cache == str(tmp_path / "cache")


def test_a_fallback_must_serve_colour_alone_and_have_the_served_classes():
    classes = ("a", "b")
    fusion = CheckpointSummary("mid.pt", "mid", 2, "depth", "m", True, classes=classes)
    assert "cannot serve colour alone" in fusion.fallback_refusal(classes)
    assert replace(fusion, aux_dropout=0.5).fallback_refusal(classes) is None
    rgb = CheckpointSummary("rgb.pt", "rgb", 2, "depth", "m", False, classes=classes)
    assert rgb.fallback_refusal(None) is None and rgb.fallback_refusal(classes) is None
    assert "has other classes" in rgb.fallback_refusal(("a", "b", "c"))


def test_fusion_method_finds_an_exported_file_when_there_is_no_checkpoint(files):
    early = files.add("early.pt", "early")
    late_onnx = files.add("late.onnx", "late")
    choice = choose(files, config(checkpoint=early, fusion_method="late"), {"fusion_method"})
    assert choice.summary.path == late_onnx and choice.runtime.backend_for(late_onnx) == "onnxruntime"
    with pytest.raises(ValueError, match=r"no checkpoint .*mid.pt \(nor .onnx\)"):
        choose(files, config(checkpoint=early, fusion_method="mid"), {"fusion_method"})


def test_a_backend_or_runtime_change_is_another_target(files):
    mid = files.add("mid.pt", "mid")
    torch_choice = choose(files, config(checkpoint=mid), {"checkpoint"})
    for change in ({"backend": "onnxruntime"}, {"compile": True}, {"tensorrt_cache_dir": "/tmp/trt"}):
        other = choose(files, config(checkpoint=mid, **change), set(change))
        assert other.target != torch_choice.target and needs_load(other, torch_choice.target, set(change))
