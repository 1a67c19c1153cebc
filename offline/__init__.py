"""Offline tools: datasets, training, evaluation, the lighting study and plots (imported as rgbd_fusion_seg.offline)."""
