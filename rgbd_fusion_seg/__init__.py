"""RGB-X (depth or thermal) fusion semantic segmentation for ROS 2.

`rgbd_fusion_seg.core` and `rgbd_fusion_seg.models` import without rclpy; `rgbd_fusion_seg.ros` holds
the thin ROS 2 layer and `rgbd_fusion_seg.offline` the training and evaluation tools.
"""

__version__ = "0.1.0"
