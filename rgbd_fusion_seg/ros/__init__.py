"""The thin ROS 2 layer over `rgbd_fusion_seg.core`.

- `image_codec`: sensor_msgs/Image <-> numpy (ROS-free functions over the raw fields, thin message wrappers)
- `pairing`: two-stream timestamp pairing with message_filters' ApproximateTimeSynchronizer semantics
- `parameters`: the node's one parameter table and the validation of runtime changes
- `contract`: the node's topics, and the docs tables, config/segment.yaml and launch arguments made from both tables
- `inference_worker`: the one-slot inference thread and the latency/rate window
- `model_serving`: checking a checkpoint (or exported .onnx) cheaply, how it runs (`Runtime`), loading it into
  an engine, the background loader
- `model_selection`: which checkpoint a configuration serves, and whether that needs a load
- `point_cloud`: semantic point cloud: camera model from CameraInfo, labelled points, PointCloud2 (ROS-free;
  the `*_msg` builders import sensor_msgs); `cloud_output`: the node's ~/points and ~/camera_info
- `degraded`: when the aux camera drops out, which model serves colour alone
- `segment_node`: the `segment_node` executable; `spinning`: spin until SIGINT/SIGTERM, then stop its threads before ROS
- `rvl`: the RVL depth codec of compressedDepth
- `harness`: start a node in its own process, stream, collect, score (the demo, bag evaluate, bench-node)
- `demo`, `node_benchmark`: `rgbd-fusion-seg demo` and `rgbd-fusion-seg bench-node`

Only `segment_node` (and the message wrappers in `image_codec` and `point_cloud`) import rclpy / sensor_msgs.
"""
