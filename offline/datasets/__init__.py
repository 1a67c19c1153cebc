"""Dataset loaders and test data.

    base.py      FrameDataset: layout checks, reading, augmentation, validate(), describe() for every loader
    mm5.py       MM5 (aligned)            mfnet.py   MFNet          pst900.py   PST900
    fmb.py       FMB                      folder.py  the generic folder layout (users' own data, bag export)
    catalog.py   which loader serves which `data.dataset`; open_dataset, build_preprocessing
    augment.py   training augmentation (flip, zoom/crop, rotation, colour jitter)
    imageio.py   reading images with errors that name the file
    synth.py     generated scenes in MM5's layout; replicas.py: the same scenes in the other layouts
"""
