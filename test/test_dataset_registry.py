"""The dataset layout registry: a layout declared in one place is read by the config schema, the catalogue,
the replica writer and `bag import`; registration errors."""
from __future__ import annotations

import pytest

from rgbd_fusion_seg.offline.bags.import_ import open_source
from rgbd_fusion_seg.offline.bags.reading import BagError
from rgbd_fusion_seg.offline.config import ConfigError, config_from_dict
from rgbd_fusion_seg.offline.datasets import registry, replicas
from rgbd_fusion_seg.offline.datasets.catalog import open_dataset
from rgbd_fusion_seg.offline.datasets.imageio import DatasetError
from rgbd_fusion_seg.offline.datasets.mfnet import MFNetDataset


@pytest.fixture
def private_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    registry.layout_names()  # discover the package's layouts first
    monkeypatch.setattr(registry, "_LAYOUTS", dict(registry._LAYOUTS))
    monkeypatch.setattr(registry, "_REPLICAS", dict(registry._REPLICAS))


def test_a_layout_declared_in_one_place_reaches_config_catalogue_replicas_and_bag_import(private_registry, tmp_path):
    @registry.register_layout
    class NightDriving(MFNetDataset):  # what a newcomer writes in offline/datasets/<new>.py
        dataset_name = "night_driving"
        title = "NightDriving"
        METAINFO = {"classes": ("road", "car", "person"), "palette": [(0, 0, 0), (255, 0, 0), (0, 255, 0)]}

    @registry.register_replica("night_driving")
    def write_night_driving(root, num_frames=8, height=48, width=64, seed=0):
        return replicas.write_mfnet_replica(root, num_frames, height, width, seed)

    root = tmp_path / "night"
    replicas.main(["night_driving", str(root)])
    data = {"dataset": "night_driving", "root": str(root), "train_split": "train", "val_split": "val",
            "num_classes": None}
    config = config_from_dict({"data": data, "model": {"method": "rgb"}})
    assert (config.data.aux_folder, config.data.label_folder) == ("thermal", "labels")  # the layout's defaults
    with pytest.raises(ConfigError, match=r"'data.num_classes' is 9 but night_driving has 3 classes"):
        config_from_dict({"data": data | {"num_classes": 9}})
    opened = open_dataset(dataset="night_driving", root=root, split="val", preprocessing=None)
    assert isinstance(opened, NightDriving) and opened.dataset_name == "night_driving"
    assert open_source(root, split="val", dataset="night_driving").dataset.stems == opened.stems
    with pytest.raises(BagError, match=r"--dataset 'nyu' is not a data set layout; registered: .*night_driving"):
        open_source(root, split="val", dataset="nyu")
    assert NightDriving.palette(3) == [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    assert len(NightDriving.palette(5)) == 5  # more classes than the palette names: the default palette


def test_every_layout_opens_its_replica_with_the_defaults_it_declares(tmp_path):
    """Each layout's class attributes agree with its loader: default aux and label folder, class count."""
    assert registry.replica_names() == registry.layout_names()
    for name in registry.layout_names():
        cls = registry.layout(name)
        summary = registry.replica_writer(name)(tmp_path / name, num_frames=8, height=32, width=32)
        split = next(iter(summary["splits"]))
        data = {"dataset": name, "root": summary["root"], "train_split": split, "val_split": split, "num_classes": None}
        config = config_from_dict({"data": data})
        assert (config.data.aux_folder, config.data.label_folder) == (cls.aux_choices[0], cls.default_label_folder)
        opened = open_dataset(dataset=name, root=summary["root"], split=split, preprocessing=None, lightings=["RGB1"],
                              aux_folder=config.data.aux_folder, label_folder=config.data.label_folder)
        assert type(opened) is cls and opened.classes == summary["classes"], name
        assert cls.expected_num_classes(config.data) in (None, opened.num_classes), name
        if cls.classes_fixed and cls.METAINFO["classes"] is not None:
            assert list(cls.METAINFO["classes"]) == opened.classes, name


def test_registration_errors(private_registry):
    with pytest.raises(TypeError, match="registered twice"):
        registry.register_layout(type("Again", (MFNetDataset,), {}))  # inherits dataset_name "mfnet"
    with pytest.raises(TypeError, match="must set `dataset_name` and `aux_choices`"):
        registry.register_layout(type("NoChoices", (MFNetDataset,), {"dataset_name": "x", "aux_choices": ()}))
    with pytest.raises(TypeError, match="replica writer for 'mfnet' is registered twice"):
        registry.register_replica("mfnet")(lambda root: {})
    with pytest.raises(DatasetError, match="dataset 'nyu' has no loader; known: fmb, folder, mfnet, mm5, pst900"):
        registry.layout("nyu")
