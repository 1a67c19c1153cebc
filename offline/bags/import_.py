"""`rgbd-fusion-seg bag import`: a data set split -> a bag, so any data set replays through the node.

    rgbd-fusion-seg bag import DATASET --out BAG [--dataset folder|mm5|mfnet|pst900|fmb|...] [--split all]
                               [--aux-folder D16] [--lighting RGB1] [--rate 10] [--storage mcap|sqlite3]

The split is opened through the data set catalogue (`offline.datasets.catalog.open_dataset`, labels
optional), so every layout it knows can be imported; `--dataset` defaults to folder when DATASET has a
dataset.yaml (e.g. written by `bag export`), else mm5. Each frame becomes messages with the same stamp:
colour (rgb8, or bgr8 with --colour-encoding), aux and, when labelled, labels (mono8 class ids). The aux
image keeps its stored values where an encoding decodes them to the unit the data set uses, so a checkpoint
trained on that data set serves the bag as it is (and export -> import is exact):

    uint16 millimetres (folder mm, MM5 D16) -> 16UC1     8-bit (raw8) -> mono8     16-bit raw (raw16) -> mono16
    float32 metres / degrees C (TIFF)       -> 32FC1     anything else (e.g. MM5 T16 counts) -> 32FC1 of the
                                                         loader's decoded values (metres or degrees C)

`--compress-colour jpeg|png` and `--compress-aux png|compressedDepth|compressedDepth-rvl` write
sensor_msgs/CompressedImage instead, on the image_transport topic names (`<topic>/compressed`,
`<topic>/compressedDepth`).

Stamps: `--rate` Hz from `--start`; a folder's stamps.csv (from `bag export`) is used instead when --rate
is not given, so export -> import keeps the recorded stamps. Each message's recorded time is its stamp.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rgbd_fusion_seg.core.preprocessing import depth_to_metres
from rgbd_fusion_seg.serving.image_codec import DEPTH_KINDS

from .reading import BagError
from .writing import STORAGES, BagWriter, compressed_message, image_message, new_output_folder

# (decoded unit, stored dtype) -> the encoding that carries the stored values unchanged
STORED_ENCODINGS = {("m", np.uint16): "16UC1", ("m", np.float32): "32FC1", ("raw8", np.uint8): "mono8",
                    ("raw16", np.uint16): "mono16", ("celsius", np.float32): "32FC1"}
DEFAULT_START_S = 1_700_000_000


@dataclass
class Source:
    dataset: object  # an offline.datasets FrameDataset (samples with rgb / aux / label files)
    modality: str
    unit: str
    stamps: dict  # stem -> (colour, aux) stamps recorded in stamps.csv
    description: str


def open_source(path, split=None, lighting="RGB1", aux_folder=None, dataset=None) -> Source:
    from rgbd_fusion_seg.offline.datasets.catalog import open_dataset
    from rgbd_fusion_seg.offline.datasets.registry import layout_names

    root = Path(path).expanduser()
    if not root.is_dir():
        raise BagError(f"no data set folder {root}")
    kind = dataset or ("folder" if (root / "dataset.yaml").is_file() else "mm5")
    if kind not in layout_names():
        raise BagError(f"--dataset {kind!r} is not a data set layout; registered: {', '.join(layout_names())}")
    split = split or ("all" if kind == "folder" else "val")
    opened = open_dataset(dataset=kind, root=root, split=split, preprocessing=None, aux_folder=aux_folder,
                          lightings=[lighting], require_labels=False)
    aux = opened.preprocessing.aux
    stamps = {}
    if kind == "folder" and (root / "stamps.csv").is_file():
        with open(root / "stamps.csv", newline="") as handle:
            try:
                stamps = {row["stem"]: (int(row["rgb_stamp_ns"]), int(row["aux_stamp_ns"]))
                          for row in csv.DictReader(handle)}
            except (KeyError, TypeError, ValueError) as error:  # a missing column or cell, a stamp not an integer
                raise BagError(f"{root / 'stamps.csv'}: expected the columns stem,rgb_stamp_ns,aux_stamp_ns with "
                               f"integer nanoseconds on every row (as bag export writes it); {type(error).__name__}: "
                               f"{error}") from None
    return Source(opened, aux.modality, aux.unit, stamps, f"{kind} data set {root} (split {split})")


def stored_aux(source: Source, path: Path) -> tuple[np.ndarray, str]:
    """(pixels, encoding): the stored values where an encoding decodes them to the data set's unit, else 32FC1."""
    from rgbd_fusion_seg.offline.datasets.imageio import read_image

    stored = read_image(path)
    stored = stored[..., 0] if stored.ndim == 3 else stored
    encoding = STORED_ENCODINGS.get((source.unit, stored.dtype.type))
    if encoding == "16UC1":  # uint16 depth is millimetres in the node; check this data set agrees
        decoded = source.dataset.decode_aux(path)
        encoding = encoding if np.array_equal(depth_to_metres(stored, 0.001), decoded, equal_nan=True) else None
    if encoding is not None:
        return stored, encoding
    if source.unit in ("m", "celsius"):  # 32FC1 carries both (depth in metres, thermal in degrees C)
        return source.dataset.decode_aux(path).astype(np.float32), "32FC1"
    raise BagError(f"{path}: {stored.dtype} pixels in unit {source.unit!r} have no image encoding the node decodes "
                   f"to {source.unit!r}")


def import_dataset(source: Source, out, storage="mcap", rate: float | None = None, start_s: float = DEFAULT_START_S,
                   colour_topic="/camera/color/image_raw", aux_topic=None, label_topic="/camera/labels",
                   frame_id="camera_optical_frame", colour_encoding="rgb8", compress_colour=None, compress_aux=None) -> dict:
    import cv2

    if colour_encoding not in ("rgb8", "bgr8"):
        raise BagError(f"--colour-encoding must be rgb8 or bgr8, not {colour_encoding!r}")
    if rate is not None and rate <= 0:
        raise BagError(f"--rate must be positive, got {rate}")
    aux_topic = aux_topic or f"/camera/{source.modality}/image_raw"
    suffixes = {None: "", "jpeg": "/compressed", "png": "/compressed", **dict.fromkeys(DEPTH_KINDS, "/compressedDepth")}
    colour_topic, aux_topic = colour_topic + suffixes[compress_colour], aux_topic + suffixes[compress_aux]

    def message(image, encoding, stamp, kind, option):
        if kind is None:
            return image_message(image, encoding, stamp, frame_id)
        try:
            return compressed_message(image, encoding, stamp, frame_id, kind)
        except ValueError as error:  # e.g. compressedDepth of mono8 thermal
            raise BagError(f"{option} {kind} cannot carry this data set's {encoding} images: {error}") from None
    start_ns, period_ns = int(start_s * 1e9), int(round(1e9 / (rate or 10.0)))
    labelled = 0
    dataset = source.dataset
    with new_output_folder(out, "bag") as staged, BagWriter(staged, storage) as writer:  # whole, or nothing at out
        for index, sample in enumerate(dataset.samples):
            colour_stamp = aux_stamp = start_ns + index * period_ns
            if rate is None and sample.stem in source.stamps:
                colour_stamp, aux_stamp = source.stamps[sample.stem]
            rgb = dataset.decode_rgb(sample.files["rgb"])
            aux, aux_encoding = stored_aux(source, sample.files["aux"])
            if aux.shape[:2] != rgb.shape[:2]:
                raise BagError(f"frame {sample.stem!r}: aux {aux.shape[1]}x{aux.shape[0]} differs from colour "
                               f"{rgb.shape[1]}x{rgb.shape[0]}")
            rgb = rgb if colour_encoding == "rgb8" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            writer.write_message(colour_topic, colour_stamp,
                                 message(rgb, colour_encoding, colour_stamp, compress_colour, "--compress-colour"))
            writer.write_message(aux_topic, aux_stamp, message(aux, aux_encoding, aux_stamp, compress_aux, "--compress-aux"))
            if "label" in sample.files:
                labels = dataset.decode_labels(sample.files["label"])
                if labels.dtype != np.uint8:
                    raise BagError(f"{sample.files['label']}: labels are {labels.dtype}; mono8 needs uint8 class ids")
                writer.write_message(label_topic, colour_stamp, image_message(labels, "mono8", colour_stamp, frame_id))
                labelled += 1
    return {"bag": str(Path(out).expanduser()), "frames": len(dataset.samples), "labelled": labelled,
            "topics": dict(writer.counts),
            "colour_topic": colour_topic, "aux_topic": aux_topic, "label_topic": label_topic if labelled else None}


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="data set folder: folder layout (dataset.yaml), MM5, MFNet, PST900, FMB")
    parser.add_argument("--dataset", dest="kind", default=None, metavar="LAYOUT",
                        help="a data set layout of offline/datasets/registry.py (mm5, mfnet, folder, ...; "
                             "default: folder if there is a dataset.yaml, else mm5)")
    parser.add_argument("--out", required=True, help="new bag folder")
    parser.add_argument("--split", default=None, help="split (folder: <split>.txt, default all; others: default val)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="bag storage (default mcap)")
    parser.add_argument("--rate", type=float, default=None, help="frames per second (default: stamps.csv if present, else 10)")
    parser.add_argument("--start", type=float, default=DEFAULT_START_S, help="first stamp, seconds since the epoch")
    parser.add_argument("--colour-topic", default="/camera/color/image_raw")
    parser.add_argument("--aux-topic", default=None, help="default /camera/<modality>/image_raw")
    parser.add_argument("--label-topic", default="/camera/labels")
    parser.add_argument("--frame-id", default="camera_optical_frame")
    parser.add_argument("--colour-encoding", choices=("rgb8", "bgr8"), default="rgb8")
    parser.add_argument("--compress-colour", choices=("jpeg", "png"), default=None,
                        help="write colour as CompressedImage on <colour-topic>/compressed")
    parser.add_argument("--compress-aux", choices=("png", *DEPTH_KINDS), default=None,
                        help="write aux as CompressedImage on <aux-topic>/compressed or /compressedDepth")
    parser.add_argument("--lighting", default="RGB1", help="MM5: lighting folder (default RGB1)")
    parser.add_argument("--aux-folder", default=None, help="aux folder as the layout names it (MM5: D16, T8, T16 ...; "
                                                           "default: the layout's default)")


def run(args) -> int:
    source = open_source(args.dataset, args.split, args.lighting, args.aux_folder, args.kind)
    result = import_dataset(source, args.out, args.storage, args.rate, args.start, args.colour_topic, args.aux_topic,
                            args.label_topic, args.frame_id, args.colour_encoding, args.compress_colour, args.compress_aux)
    topics = ", ".join(f"{topic} {count}" for topic, count in result["topics"].items())
    print(f"wrote {result['bag']} from {source.description}: {result['frames']} frames ({result['labelled']} labelled); "
          f"{topics}")
    return 0
