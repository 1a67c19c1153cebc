"""rosbag2 bags (sqlite3 and mcap, read and written with `rosbags`; no ros2 CLI needed).

    reading.py   open a bag, find its image topics, decode Image / CompressedImage messages (clear errors)
    writing.py   a bag writer that is always closed into a valid bag, even on an error or Ctrl-C
    play.py      `bag play`: publish a bag's topics with their recorded timing (rate, offset, loop, /clock)
    evaluate.py  `bag evaluate`: bag -> segment_node (own process) -> a new bag + latency / rate / mIoU report
    export.py    `bag export`: synchronised colour/aux pairs -> the generic folder layout (COMMON contract)
    import_.py   `bag import`: a data set split (any layout of the catalogue) -> a bag with colour, aux, labels
    cli.py       the `rgbd-fusion-seg bag ...` subcommands
"""
