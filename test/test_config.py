"""Experiment configs: the shipped YAML files, inheritance, overrides and the errors for bad fields."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

from rgbd_fusion_seg.offline.config import (
    CONFIG,
    DOCS_MARKERS,
    MM5_LIGHTINGS,
    RESUMABLE_FIELDS,
    SECTION_TYPES,
    ConfigError,
    ExperimentConfig,
    Section,
    config_from_dict,
    deep_merge,
    fields_table,
    load_config,
    replace_fields,
)
from rgbd_fusion_seg.offline.config import main as config_main

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "config" / "experiments"
SEED_METHODS = ("rgb", "early", "mid", "late", "se", "attention")


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_base_config_is_the_published_recipe():
    config = load_config(EXPERIMENTS / "mm5" / "base.yaml")
    assert config.train.optimizer == "adamw" and config.train.lr == 1e-3
    assert config.train.batch_size == 32 and config.train.epochs == 300
    assert config.loss.ce == 1.0 and config.loss.dice == 1.0
    assert config.data.input_size == [224, 224] and config.data.num_classes == 32
    assert config.data.aux_folder == "D_FocusN" and config.data.label_folder == "ANNO_CLASS"


def test_all_48_study_configs_resolve():
    files = sorted((EXPERIMENTS / "mm5").glob("*/*.yaml"))
    assert len(files) == 48
    seen = set()
    for path in files:
        config = load_config(path)
        method, lighting = path.stem.rsplit("_", 1)
        assert path.parent.name == method and method in SEED_METHODS
        assert config.model.method == method
        assert config.data.lightings == [lighting] and lighting in MM5_LIGHTINGS
        assert config.experiment == f"mm5_{method}_{lighting}"
        assert config.out_path == Path.cwd() / "runs" / config.experiment  # ${experiment} interpolated
        assert config.train.epochs == 300  # inherited from base.yaml
        seen.add((method, lighting))
    assert len(seen) == 48


def test_synth_study_config_resolves():
    config = load_config(EXPERIMENTS / "mm5_synth_study.yaml")
    assert config.model.pretrained is False
    assert config.study.generate["num_frames"] > 0
    assert config.study.methods == list(SEED_METHODS)
    assert config.study.lightings == list(MM5_LIGHTINGS)


def test_base_is_deep_merged_and_relative_to_the_file(tmp_path):
    write(tmp_path / "common" / "base.yaml", {"experiment": "b", "train": {"epochs": 5, "batch_size": 4}})
    child = write(tmp_path / "exp" / "child.yaml", {"base": "../common/base.yaml", "train": {"epochs": 7}})
    config = load_config(child)
    assert config.train.epochs == 7 and config.train.batch_size == 4 and config.experiment == "b"


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="each other"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_the_field(tmp_path):
    path = write(tmp_path / "a.yaml", {"base": "nope.yaml"})
    with pytest.raises(ConfigError, match="'base'.*nope.yaml"):
        load_config(path)


def test_overrides_and_cli_paths(tmp_path):
    path = write(tmp_path / "a.yaml", {"experiment": "x"})
    config = load_config(
        path,
        ["train.epochs=2", "data.lightings=[RGB4, RGB5]", "train.lr=1e-4", "train.max_steps=null"],
        data_root="somewhere",
        out_dir=tmp_path / "out",
    )
    assert config.train.epochs == 2 and config.data.lightings == ["RGB4", "RGB5"]
    assert config.train.lr == pytest.approx(1e-4)  # YAML reads 1e-4 as a string: coerced
    assert config.data_root == Path.cwd() / "somewhere"
    assert config.out_path == tmp_path / "out"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=2", r"unknown field\(s\) train.epoch"),
        ("trian.epochs=2", r"unknown section\(s\) trian"),
        ("train.epochs=two", r"'train.epochs': expected an integer"),
        ("train.epochs=0", r"'train.epochs': must be at least 1"),
        ("model.method=fancy", r"'model.method': unknown fusion method 'fancy'"),
        ("model.options={width: 3}", r"'model.options'.*no option\(s\) width"),
        ("data.input_size=[224]", r"'data.input_size'"),
        ("data.aux_range=[5, 1]", r"'data.aux_range'.*high must exceed low"),
        ("loss.class_weights=sqrt", r"'loss.class_weights'"),
        ("train.optimizer=lion", r"'train.optimizer': 'lion' is not one of"),
        ("epochs", r"must look like section.field=value"),
    ],
)
def test_bad_fields_are_named(tmp_path, override, message):
    path = write(tmp_path / "exp.yaml", {"experiment": "x"})
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, [override])
    if "=" in override:
        assert str(path) in str(info.value)


def test_unknown_field_in_file_names_file_and_field(tmp_path):
    path = write(tmp_path / "exp.yaml", {"train": {"epochs": 3, "bacth_size": 2}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "train.bacth_size" in str(info.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path = write(tmp_path / "bad.yaml", "train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_pretrained_for_a_method_without_it_and_class_weight_count():
    with pytest.raises(ConfigError, match="class_weights"):
        config_from_dict({"data": {"num_classes": 3}, "loss": {"class_weights": [1, 2]}})
    with pytest.raises(ConfigError, match="model.pretrained"):
        config_from_dict({"model": {"options": {"pretrained": True}}})


def test_model_kwargs_pass_pretrained_and_options():
    config = config_from_dict({"model": {"method": "se", "pretrained": False, "options": {"reduction": 8}}})
    assert config.model_kwargs() == {"reduction": 8, "pretrained": False}


def test_replace_fields_revalidates():
    config = config_from_dict({"experiment": "a"})
    changed = replace_fields(config, **{"model.method": "mid", "data.lightings": ["RGB7"]})
    assert changed.model.method == "mid" and changed.data.lightings == ["RGB7"]
    with pytest.raises(ConfigError):
        replace_fields(config, **{"model.method": "nope"})


def test_deep_merge_replaces_lists():
    assert deep_merge({"a": {"b": [1, 2], "c": 1}}, {"a": {"b": [3]}}) == {"a": {"b": [3], "c": 1}}


# ----------------------------------------------------------------------------------------------------
# One declaration per field (CONFIG): defaults, validation, the docs table and the resumable fields derive


def declared_fields():
    """(dotted name, Field) for every top-level field and section field of CONFIG."""
    for name, item in CONFIG.items():
        if isinstance(item, Section):
            yield from ((f"{name}.{key}", field) for key, field in item.fields.items())
        else:
            yield name, item


def test_every_declared_field_has_its_default_and_is_validated_by_its_declaration(tmp_path):
    defaults = {name: cls() for name, cls in SECTION_TYPES.items()}
    path = write(tmp_path / "exp.yaml", {"experiment": "x"})
    for dotted, field in declared_fields():
        section, _, key = dotted.partition(".")
        if key:
            value = getattr(defaults[section], key)
            assert value == field.default, dotted
            if isinstance(value, (list, dict)):
                assert value is not field.default, f"{dotted}: each config gets its own copy of the default"
        with pytest.raises(ConfigError, match=rf"{path}: field '{dotted}'"):  # a list in a list: no field takes it
            load_config(path, ["out_dir=runs", f"{dotted}=[[]]"])


def conforms(value, hint) -> bool:
    """Whether `value` is of type `hint`: unions, list[X], plain classes; a bool is no int nor float."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(conforms(value, option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(conforms(item, typing.get_args(hint)[0]) for item in value)
    if hint in (int, float) and isinstance(value, bool):
        return False
    return value is None if hint is type(None) else isinstance(value, hint)


def test_the_declared_classes_have_the_tables_fields_types_and_defaults():
    assert [f.name for f in dataclasses.fields(ExperimentConfig)] == [*CONFIG, "source"]
    hints = typing.get_type_hints(ExperimentConfig)
    for name, item in CONFIG.items():
        if isinstance(item, Section):
            assert hints[name] is SECTION_TYPES[name]
            assert [f.name for f in dataclasses.fields(SECTION_TYPES[name])] == list(item.fields), name
    default = ExperimentConfig()
    for dotted, field in declared_fields():
        section, _, key = dotted.partition(".")
        assert (getattr(getattr(default, section), key) if key else getattr(default, section)) == field.default, dotted
    # Every value a validator gives has the declared type: the defaults, the shipped configs, the other forms.
    other_forms = ["data.lightings=all", "data.train_split=[a, b]", "data.input_size=null", "data.num_classes=null",
                   "data.aux_range=[0, 5]", "train.max_steps=5", "train.grad_clip=1", "train.checkpoint_every_steps=null",
                   "loss.class_weights=log_frequency", "loss.ohem={}", "study.methods=[rgb]", "study.lightings=[RGB1]",
                   "study.generate={}"]
    configs = [config_from_dict({}), load_config(EXPERIMENTS / "mm5" / "base.yaml", other_forms),
               load_config(EXPERIMENTS / "mm5" / "base.yaml", ["loss.class_weights=[1, 2]", "data.num_classes=2"])]
    configs += [load_config(path) for path in sorted(EXPERIMENTS.rglob("*.yaml"))]
    for config in configs:
        for dotted, _ in declared_fields():
            section, _, key = dotted.partition(".")
            owner, name = (getattr(config, section), key) if key else (config, section)
            value, hint = getattr(owner, name), typing.get_type_hints(type(owner))[name]
            assert conforms(value, hint), f"{config.source}: {dotted} = {value!r} is not {hint}"


def test_resumable_fields_derive_from_the_declaration():
    from rgbd_fusion_seg.offline import train

    # what train.py checks a resumed run against
    assert train._config_differences({"train": {"epochs": 1, "lr": 0.1}}, {"train": {"epochs": 2, "lr": 0.1}}) == []
    assert train._config_differences({"train": {"lr": 0.1}}, {"train": {"lr": 0.2}}) == ["train.lr: 0.1 -> 0.2"]
    resumable = {dotted for dotted, field in declared_fields() if field.resumable}
    assert "study" in RESUMABLE_FIELDS and all(f"study.{key}" in resumable for key in CONFIG["study"].fields)
    assert {name for name in RESUMABLE_FIELDS if "." in name} <= resumable


def test_docs_training_lists_every_field_as_declared():
    """docs/training.md's table of fields is fields_table(): `python -m rgbd_fusion_seg.offline.config
    --update-docs docs/training.md` rewrites it after a field changes."""
    text = (REPO / "docs" / "training.md").read_text()
    start, end = DOCS_MARKERS
    assert start in text and end in text, f"docs/training.md lacks the markers {start} ... {end}"
    assert text.split(start, 1)[1].split(end, 1)[0] == "\n" + fields_table(), (
        "docs/training.md's table of config fields differs from offline/config.py's CONFIG; regenerate it with "
        "python -m rgbd_fusion_seg.offline.config --update-docs docs/training.md"
    )
    for dotted, field in declared_fields():
        assert f"| `{dotted}` |" in text, dotted


def test_the_docs_table_is_rewritten_between_the_markers_only(tmp_path):
    doc = tmp_path / "training.md"
    doc.write_text(f"# Training\n\nbefore\n{DOCS_MARKERS[0]}\nstale\n{DOCS_MARKERS[1]}\nafter\n")
    assert config_main(["--update-docs", str(doc)]) == 0
    text = doc.read_text()
    assert text == f"# Training\n\nbefore\n{DOCS_MARKERS[0]}\n{fields_table()}{DOCS_MARKERS[1]}\nafter\n"
    assert config_main(["--update-docs", str(doc)]) == 0 and doc.read_text() == text  # idempotent
    assert "| `train.epochs` | `300` | yes | passes over the training split |" in text
    doc.write_text("# Training\nno markers\n")
    with pytest.raises(ConfigError, match="lacks the markers"):
        config_main(["--update-docs", str(doc)])
    assert doc.read_text() == "# Training\nno markers\n"
