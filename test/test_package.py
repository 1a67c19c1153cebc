"""The package as a ROS 2 distro sees it: package.xml, setup.py/setup.cfg, and a real `colcon build`.

colcon comes from PyPI (colcon-common-extensions) and builds this ament_python package without a ROS 2
distro; launch/launch_ros are not installed here, so the launch file is checked in test_launch_file.py.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "rgbd_fusion_seg"
SOURCE_DIRS = (REPO / PACKAGE, REPO / "offline")

# Top-level import -> the rosdep key package.xml must list as an <exec_depend>. An import of the package's
# code that is not stdlib, not the package itself and not in this table fails test_every_runtime_import_*:
# add the import here with its rosdep key and the key to package.xml.
ROSDEP_KEYS = {
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "builtin_interfaces": "builtin_interfaces",
    "sensor_msgs": "sensor_msgs",
    "std_msgs": "std_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "rosgraph_msgs": "rosgraph_msgs",
    "ament_index_python": "ament_index_python",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "yaml": "python3-yaml",
    "torch": "python3-torch",
    "torchvision": "python3-torchvision",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "torchmetrics": "python3-torchmetrics-pip",
    "rosbags": "python3-rosbags-pip",
    "rosbags_image": "python3-rosbags-pip",
    "timm": "python3-timm-pip",
    "onnxruntime": "python3-onnxruntime-pip",
}
# Top-level import -> its PyPI distribution, for what rosdep's database has no key for: the README's colcon
# section pip-installs these.
PIP_ONLY = {
    "tensorboard": "tensorboard",
    "mambapy": "mambapy",
    "numba": "numba",
    "sam2": "rf-sam-2",
    "open_clip": "open-clip-torch",
    "onnx": "onnx",
}
# Submodules that pull in another distribution of their own.
SUBMODULE_KEYS = {"torch.utils.tensorboard": "tensorboard"}
# Imported only by tests or developer tools, never at run time by the installed package.
# mamba_ssm: SC-CoSF's optional CUDA scan, imported only when installed (the README's GPU extra).
NOT_RUNTIME = {"pytest", "mamba_ssm"}


def _package_xml() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def _exec_depends(root: ET.Element) -> set[str]:
    tags = ("exec_depend", "depend")
    return {element.text.strip() for tag in tags for element in root.findall(tag)}


def _setup_call() -> ast.Call:
    tree = ast.parse((REPO / "setup.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    assert len(calls) == 1, "setup.py must call setup() once"
    return calls[0]


def _setup_keyword(name: str) -> ast.expr:
    for keyword in _setup_call().keywords:
        if keyword.arg == name:
            return keyword.value
    raise AssertionError(f"setup.py's setup() has no {name}=")


def _runtime_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> files of the package importing it (stdlib and own modules left out)."""
    found: dict[str, set[str]] = {}
    own = {PACKAGE}
    for folder in SOURCE_DIRS:
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = SUBMODULE_KEYS.get(name, name.split(".")[0])
                    if top in sys.stdlib_module_names or top in own or top == "__future__":
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


# ---- package.xml ---------------------------------------------------------------------------------


def test_package_xml_is_format_3_ament_python():
    root = _package_xml()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("export/build_type") == "ament_python"
    for field in ("version", "description", "maintainer", "license"):
        assert (root.findtext(field) or "").strip(), f"package.xml has no <{field}>"
    assert root.find("maintainer").get("email"), "package.xml's <maintainer> needs an email attribute"


def test_package_xml_validates_with_catkin_pkg():
    """catkin_pkg (what colcon-ros and bloom read package.xml with) accepts it without warnings."""
    package = pytest.importorskip("catkin_pkg.package")
    warnings: list[str] = []
    parsed = package.parse_package(str(REPO / "package.xml"), warnings=warnings)
    parsed.validate(warnings=warnings)
    assert parsed.name == PACKAGE and parsed.package_format == 3
    assert parsed.get_build_type() == "ament_python"
    assert not warnings, warnings


def test_version_agrees_between_package_xml_setup_py_and_module():
    import rgbd_fusion_seg

    version = _package_xml().findtext("version")
    assert ast.literal_eval(_setup_keyword("version")) == version
    assert rgbd_fusion_seg.__version__ == version


def test_every_runtime_import_is_an_exec_depend():
    imports = _runtime_imports()
    unmapped = {name: sorted(files) for name, files in imports.items()
                if name not in ROSDEP_KEYS and name not in PIP_ONLY and name not in NOT_RUNTIME}
    assert not unmapped, (f"imports without a rosdep key in this test's ROSDEP_KEYS (add them and to package.xml) "
                          f"or a PyPI name in PIP_ONLY: {unmapped}")
    declared = _exec_depends(_package_xml())
    missing = {
        ROSDEP_KEYS[name]: sorted(files)
        for name, files in imports.items()
        if name in ROSDEP_KEYS and ROSDEP_KEYS[name] not in declared
    }
    assert not missing, f"package.xml lacks <exec_depend> for (key: importing files): {missing}"


def test_the_readme_pip_installs_what_rosdep_cannot():
    """A distro user follows the README's colcon section: its pip line installs every PIP_ONLY distribution."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## With a ROS 2 distro"):]
    pip_line = next(line for line in section.splitlines() if line.startswith("pip install "))
    named = set(pip_line.split("#")[0].split()[2:])
    assert set(PIP_ONLY.values()) <= named, f"the README's colcon pip line lacks {set(PIP_ONLY.values()) - named}"
    assert not named & {key.removeprefix("python3-").removesuffix("-pip") for key in _exec_depends(_package_xml())
                        if key.endswith("-pip")}, "installed by rosdep already"


def test_core_needs_no_ros_imports():
    ros_modules = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "rcl_interfaces", "builtin_interfaces"}
    for folder in ("core", "models"):
        for path in (REPO / PACKAGE / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    assert not {n.split(".")[0] for n in names} & ros_modules, f"{path} imports ROS"


# ---- setup.py / setup.cfg --------------------------------------------------------------------------


def test_setup_installs_ament_resources_launch_and_config():
    data_files = _setup_keyword("data_files")
    text = ast.unparse(data_files)
    for needed in ("share/ament_index/resource_index/packages", "package.xml", "launch", "config"):
        assert needed in text, f"setup.py data_files do not install {needed}"
    marker = REPO / "resource" / PACKAGE
    assert marker.is_file(), "resource/rgbd_fusion_seg (the ament index marker) is missing"
    assert (REPO / "launch" / "segment.launch.py").is_file()
    assert (REPO / "config" / "segment.yaml").is_file()


def test_console_scripts_and_script_dir():
    scripts = ast.literal_eval(_setup_keyword("entry_points"))["console_scripts"]
    targets = dict(entry.replace(" ", "").split("=", 1) for entry in scripts)
    assert targets.get("segment_node") == "rgbd_fusion_seg.ros.segment_node:main"
    module, _, function = targets["segment_node"].partition(":")
    assert (REPO / Path(*module.split("."))).with_suffix(".py").is_file(), f"{module} does not exist"
    # ros2 run looks for executables in lib/<package>: setup.cfg must put the console scripts there
    cfg = (REPO / "setup.cfg").read_text()
    assert f"script_dir=$base/lib/{PACKAGE}" in cfg.replace(" ", "")
    assert f"install_scripts=$base/lib/{PACKAGE}" in cfg.replace(" ", "")


# ---- colcon build --------------------------------------------------------------------------------

_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "install", "log", "runs", "__pycache__", "*.egg-info", ".pytest_cache", "test", ".notes"
)


def _colcon() -> str:
    candidate = Path(sys.executable).parent / "colcon"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("colcon")
    if not found:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    return found


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    """`colcon build` of a copy of the package in a fresh workspace; returns the package's install prefix."""
    colcon = _colcon()
    workspace = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(REPO, workspace / "src" / PACKAGE, ignore=_IGNORE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLCON_", "AMENT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [colcon, "--log-base", "log", "build", "--base-paths", "src", "--build-base", "build",
         "--install-base", "install", "--event-handlers", "console_direct-"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return workspace / "install" / PACKAGE


def test_colcon_build_installs_the_ros_layout(colcon_install):
    for relative in (
        f"lib/{PACKAGE}/segment_node",
        f"share/{PACKAGE}/launch/segment.launch.py",
        f"share/{PACKAGE}/config/segment.yaml",
        f"share/ament_index/resource_index/packages/{PACKAGE}",
        f"share/{PACKAGE}/package.xml",
    ):
        assert (colcon_install / relative).is_file(), f"colcon build did not install {relative}"
    assert os.access(colcon_install / "lib" / PACKAGE / "segment_node", os.X_OK)
    site = next(colcon_install.glob("lib/python3*/site-packages"))
    entry_points = next(site.glob(f"{PACKAGE}-*-info/entry_points.txt")).read_text().replace(" ", "")
    assert "segment_node=rgbd_fusion_seg.ros.segment_node:main" in entry_points


def test_colcon_installed_python_package_is_complete_and_importable(colcon_install, tmp_path):
    site = next(colcon_install.glob("lib/python3*/site-packages"))
    installed = site / PACKAGE
    for module in ("core/engine.py", "models/registry.py", "ros/segment_node.py", "offline/__init__.py",
                   "offline/train.py", "offline/metrics.py", "offline/datasets/synth.py"):
        assert (installed / module).is_file(), f"the installed package lacks {module}"
    # The installed copy (not the source tree) imports, offline subpackage included, and the contract module
    # the installed launch file imports.
    code = (
        "import rgbd_fusion_seg, rgbd_fusion_seg.offline.metrics, rgbd_fusion_seg.offline.datasets.synth, "
        "rgbd_fusion_seg.core.engine, rgbd_fusion_seg.ros.contract; print(rgbd_fusion_seg.__file__); "
        "print(rgbd_fusion_seg.offline.metrics.__file__)"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), f"imported {line} instead of the installed copy"


def test_colcon_ament_index_finds_the_installed_share(colcon_install):
    """What `get_package_share_directory` (used by the launch file) returns after sourcing the workspace."""
    code = (
        "from ament_index_python.packages import get_package_share_directory as g; "
        "print(g('rgbd_fusion_seg'))"
    )
    env = dict(os.environ, AMENT_PREFIX_PATH=str(colcon_install))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip("ament_index_python is not installed")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == colcon_install / "share" / PACKAGE
