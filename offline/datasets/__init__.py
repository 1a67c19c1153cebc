"""Dataset loaders and test data.

    base.py      FrameDataset: layout checks, reading, augmentation, validate(), describe() for every loader
    mm5.py       MM5 (aligned)            mfnet.py   MFNet          pst900.py   PST900
    fmb.py       FMB                      folder.py  the generic folder layout (users' own data, bag export)
    registry.py  name -> layout: each loader registers itself (@register_layout) with its classes, aux
                 choices and defaults, and its replica writer (@register_replica); a new layout is one module
    catalog.py   the config's data checks, open_dataset, build_preprocessing, all read from the registry
    augment.py   training augmentation (flip, zoom/crop, rotation, colour jitter)
    imageio.py   reading images with errors that name the file
    synth.py     generated scenes in MM5's layout; replicas.py: the same scenes in the other layouts
"""
