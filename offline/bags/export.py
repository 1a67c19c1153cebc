"""`rgbd-fusion-seg bag export`: a bag's synchronised colour/aux pairs -> the generic folder layout.

    rgbd-fusion-seg bag export BAG --rgb-topic T --aux-topic T --modality depth|thermal --out DIR

Pairs are made exactly as segment_node makes them: `serving.pairing.ApproximateTimePairer` with the same queue
size and slop (defaults: the node's sync.queue_size and sync.slop, 10 and 0.05 s), fed in the bag's recorded
order. Writes (COMMON folder contract):

    DIR/dataset.yaml     format rgbd_fusion_seg/folder/1, modality, aux_unit, and where the frames came from
    DIR/rgb/<stem>.png   8-bit RGB (CompressedImage colour is decoded first)
    DIR/depth|thermal/<stem>.png|tiff   the aux image as recorded:
                         depth 16UC1 -> uint16 PNG, aux_unit mm;   32FC1 -> float32 TIFF, aux_unit m
                         thermal mono8 -> uint8 PNG, raw8;  mono16/16UC1 -> uint16 PNG, raw16;  32FC1 -> TIFF, celsius
    DIR/all.txt          the stems, one per line
    DIR/stamps.csv       stem,rgb_stamp_ns,aux_stamp_ns
No labels/ folder: label the frames yourself (labels/<stem>.png, uint8 class ids, 255 = ignore; add
`classes:` to dataset.yaml). An aux image whose size differs from its colour image is resized to the colour
size with nearest-neighbour interpolation (what the node does before inference: no new values are made up)
and the count of resized frames is reported and written to dataset.yaml.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from rgbd_fusion_seg.serving.pairing import ApproximateTimePairer
from rgbd_fusion_seg.serving.parameters import PARAMETERS_BY_NAME

from .reading import BagError, colour_of, deserialize, first_image, image_connection, messages, pixels, reading, stamp_ns
from .writing import new_output_folder, refuse_existing_output

# segment_node's pairing defaults, so that a bag pairs here as the node pairs it live
NODE_QUEUE_SIZE = PARAMETERS_BY_NAME["sync.queue_size"].default
NODE_SLOP = PARAMETERS_BY_NAME["sync.slop"].default

# modality -> recorded encoding -> the folder layout's aux_unit (its dtype and file type: datasets.folder)
AUX_FILES = {
    "depth": {"16UC1": "mm", "32FC1": "m"},
    "thermal": {"mono8": "raw8", "8UC1": "raw8", "mono16": "raw16", "16UC1": "raw16", "32FC1": "celsius"},
}


def aux_file(modality: str, encoding: str, topic: str) -> tuple[str, str, type]:
    """(aux_unit, file suffix, stored dtype) for an aux topic's encoding."""
    from rgbd_fusion_seg.offline.datasets.folder import AUX_UNITS  # imported when used: it imports torch

    unit = AUX_FILES.get(modality, {}).get(encoding)
    if unit is None:
        supported = ", ".join(AUX_FILES.get(modality, {}))
        raise BagError(f"aux topic {topic!r} is {encoding}, which the folder layout cannot hold as {modality}; "
                       f"supported: {supported}")
    _, _, dtype, suffixes, _ = AUX_UNITS[unit]
    return unit, suffixes[0], dtype


def write_image(path: Path, image: np.ndarray) -> None:
    """Encoded in memory, then written by Python: a failed write raises OSError with its cause (cv2.imwrite
    only returns False)."""
    encoded, data = cv2.imencode(path.suffix, image)
    if not encoded:
        raise BagError(f"cannot encode a {image.dtype} {image.shape} image as {path.suffix} for {path.name}")
    path.write_bytes(data.tobytes())


def export(bag, out, rgb_topic: str, aux_topic: str, modality: str, queue_size: int = NODE_QUEUE_SIZE,
           slop: float = NODE_SLOP, log=print) -> dict:
    """Write the data set at `out` whole, or nothing there (it is written beside `out`, then renamed)."""
    out = Path(out).expanduser()
    refuse_existing_output(out, "export folder")
    if modality not in AUX_FILES:
        raise BagError(f"unknown modality {modality!r}; expected depth or thermal")
    with reading(bag) as reader:
        connections = [image_connection(reader, rgb_topic, "colour"), image_connection(reader, aux_topic, "aux")]
        aux_file(modality, first_image(reader, connections[1]).encoding, aux_topic)  # before anything is written
        with new_output_folder(out, "export folder") as folder:
            info = _write_pairs(reader, connections, folder, modality, ApproximateTimePairer(queue_size, slop))
    if info["source"]["aux_resized_to_colour"]:
        log(f"warning: {info['source']['aux_resized_to_colour']} aux image(s) differed in size from their colour "
            "image and were resized to it (nearest neighbour, as the node does)")
    return info


def _write_pairs(reader, connections, folder: Path, modality: str, pairer: ApproximateTimePairer) -> dict:
    """The pairs of the bag's two image topics, as the node makes them -> the folder layout; its dataset.yaml."""
    from rgbd_fusion_seg.offline.datasets.folder import FORMAT

    rgb_topic, aux_topic = (connection.topic for connection in connections)
    (folder / "rgb").mkdir(parents=True)
    (folder / modality).mkdir()
    rows, resized, unit = [], 0, None
    for connection, _, raw in messages(reader, connections):
        msg = deserialize(raw, connection)
        pair = pairer.add(0 if connection.topic == rgb_topic else 1, stamp_ns(msg), msg)
        if pair is None:
            continue
        rgb = colour_of(pair.first, rgb_topic)
        aux, encoding = pixels(pair.second, aux_topic)
        frame_unit, suffix, dtype = aux_file(modality, encoding, aux_topic)
        if unit not in (None, frame_unit):
            raise BagError(f"aux topic {aux_topic!r} changes encoding mid-bag ({unit} -> {frame_unit} at stamp "
                           f"{pair.second_stamp}); a folder data set has one aux unit")
        unit = frame_unit
        aux = np.ascontiguousarray(aux, dtype=dtype)  # native byte order for the image writer
        if aux.shape != rgb.shape[:2]:
            aux = cv2.resize(aux, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
            resized += 1
        stem = f"{len(rows):06d}"
        write_image(folder / "rgb" / f"{stem}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        write_image(folder / modality / f"{stem}{suffix}", aux)
        rows.append((stem, pair.first_stamp, pair.second_stamp))
    counts, bag_path = pairer.counts, str(Path(reader.path).resolve())
    if not rows:
        raise BagError(f"no colour/aux pairs in {bag_path} within slop {pairer.slop} s ({counts.received[0]} colour "
                       f"and {counts.received[1]} aux messages); try a larger --slop")
    info = {
        "format": FORMAT,
        "modality": modality,
        "aux_unit": unit,
        "ignore_index": 255,
        "source": {"bag": bag_path, "rgb_topic": rgb_topic, "aux_topic": aux_topic, "queue_size": pairer.queue_size,
                   "slop": pairer.slop, "pairs": len(rows), "colour_messages": counts.received[0],
                   "aux_messages": counts.received[1], "aux_resized_to_colour": resized},
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    (folder / "all.txt").write_text("".join(f"{stem}\n" for stem, _, _ in rows))
    (folder / "stamps.csv").write_text("stem,rgb_stamp_ns,aux_stamp_ns\n"
                                       + "".join(f"{s},{a},{b}\n" for s, a, b in rows))
    return info


def add_arguments(parser) -> None:
    parser.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap)")
    parser.add_argument("--rgb-topic", required=True, help="colour topic (Image or CompressedImage)")
    parser.add_argument("--aux-topic", required=True, help="depth or thermal topic (Image or CompressedImage)")
    parser.add_argument("--modality", required=True, choices=tuple(AUX_FILES), help="what the aux topic carries")
    parser.add_argument("--out", required=True, help="new folder for the data set")
    parser.add_argument("--queue-size", type=int, default=NODE_QUEUE_SIZE,
                        help=f"pairing queue size (the node's sync.queue_size, default {NODE_QUEUE_SIZE})")
    parser.add_argument("--slop", type=float, default=NODE_SLOP,
                        help=f"pairing slop in seconds (the node's sync.slop, default {NODE_SLOP})")


def run(args) -> int:
    info = export(args.bag, args.out, args.rgb_topic, args.aux_topic, args.modality, args.queue_size, args.slop)
    source = info["source"]
    print(f"exported {source['pairs']} pairs ({source['colour_messages']} colour, {source['aux_messages']} aux messages) "
          f"to {args.out}: rgb/, {info['modality']}/ ({info['aux_unit']}), all.txt, stamps.csv, dataset.yaml. Put labels "
          f"in {args.out}/labels/<stem>.png (uint8 class ids, 255 = ignore) and class names under `classes:` in dataset.yaml.")
    return 0
