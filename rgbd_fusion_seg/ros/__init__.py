"""The ROS 2 layer: the node's wiring over `rgbd_fusion_seg.serving`.

- `segment_node`: the `segment_node` executable (parameters to the serving objects, subscriptions, publishers,
  lifecycle); `spinning`: spin until SIGINT/SIGTERM, then stop its threads before ROS
- `messages`: the message wrappers, sensor_msgs messages <-> the serving objects' arrays
- `contract`: the node's topics, and the docs tables, config/segment.yaml and launch arguments made from them
  and the parameter table (`rgbd_fusion_seg.serving.parameters`)

Imports run one way: `offline` -> `ros` -> `serving` -> `core` -> `models` (test_layout checks it). The tools
that start a node (`rgbd-fusion-seg demo`, `bench-node`, `bag evaluate`) live in `rgbd_fusion_seg.offline`.
"""
