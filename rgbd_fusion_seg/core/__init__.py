"""ROS-free core shared by the node and the offline tools: preprocessing, checkpoints, inference, palettes."""
