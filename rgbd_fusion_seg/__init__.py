"""RGB-X (depth or thermal) fusion semantic segmentation for ROS 2.

Layers, imports running one way: `rgbd_fusion_seg.offline` (training, evaluation, the tools that start a node)
-> `rgbd_fusion_seg.ros` (the node's wiring) -> `rgbd_fusion_seg.serving` (what the node does with frames,
ROS-free) -> `rgbd_fusion_seg.core` (checkpoints, preprocessing, the engine) -> `rgbd_fusion_seg.models`.
"""

__version__ = "0.1.0"
