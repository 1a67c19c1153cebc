"""What the node does with frames, without ROS: everything here is tested in-process, without rclpy.

- `frame_pipeline`: what the node does with each frame: pairing, the degraded-mode policy, the prediction
  and every enabled output as arrays; `node_health`: counters, ~/stats, /diagnostics' judgement, the
  watchdog; `model_host`: the served and fallback models, loaded in the background
- `image_codec`: sensor_msgs/Image and CompressedImage fields <-> numpy (the message wrappers are
  `ros.messages`); `rvl`: the RVL depth codec of compressedDepth
- `pairing`: two-stream timestamp pairing with message_filters' ApproximateTimeSynchronizer semantics
- `parameters`: the node's one parameter table and the validation of changes
- `inference_worker`: the one-slot inference thread and the latency/rate window
- `model_serving`: checking a checkpoint (or exported .onnx) cheaply, how it runs (`Runtime`), loading it into
  an engine, the background loader; `model_selection`: which checkpoint a configuration serves, and whether
  that needs a load
- `degraded`: when the aux camera drops out, which model serves colour alone
- `point_cloud`: camera model from CameraInfo, labelled points, PointCloud2 fields; `cloud_output`: the
  node's ~/points and ~/camera_info

It imports `core` and `models`, never `ros` or `offline`.
"""
