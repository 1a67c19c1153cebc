from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = "rgbd_fusion_seg"

setup(
    name=package_name,
    version="0.1.0",
    # The offline tools live in the top-level offline/ folder but import as rgbd_fusion_seg.offline.
    packages=find_packages(include=[package_name, f"{package_name}.*"])
    + [f"{package_name}.offline"]
    + [f"{package_name}.offline.{sub}" for sub in find_packages(where="offline")],
    package_dir={f"{package_name}.offline": "offline"},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ]
    # The training configs keep their folder structure (experiments/mm5/<method>/...).
    + [
        (f"share/{package_name}/{folder}", glob(f"{folder}/*.yaml"))
        for folder in sorted({str(Path(p).parent) for p in glob("config/experiments/**/*.yaml", recursive=True)})
    ],
    install_requires=["numpy", "opencv-contrib-python-headless", "pyyaml", "torch", "torchvision"],
    zip_safe=True,
    maintainer="rgbd_fusion_seg maintainers",
    maintainer_email="maintainers@rgbd-fusion-seg.invalid",
    description="RGB-D / RGB-thermal fusion semantic segmentation for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "segment_node = rgbd_fusion_seg.ros.segment_node:main",
            "rgbd-fusion-seg = rgbd_fusion_seg.offline.cli:main",
        ],
    },
)
