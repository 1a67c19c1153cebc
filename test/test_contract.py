"""The node's contract in one place (rgbd_fusion_seg/ros/contract.py): what is made from it has not drifted, and
the node itself has exactly the topics the table says."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rgbd_fusion_seg.ros import contract
from rgbd_fusion_seg.serving.parameters import PARAMETERS
from ros_helpers import domain_id_for

REPO = Path(__file__).resolve().parents[1]
# Markdown files -> the contract tables each must hold between its markers.
DOCS = {"README.md": {"topics"}, "docs/node.md": {"topics", "parameters"}}
ENCODING = re.compile(r"\b(?:rgba?8|bgra?8|mono(?:8|16)|\d+[UF]C\d)\b")


def test_config_file_is_generated_from_the_table():
    assert (REPO / "config" / "segment.yaml").read_text() == contract.params_yaml(), (
        f"config/segment.yaml has drifted from the parameter table; regenerate: {contract.REGENERATE}")


@pytest.mark.parametrize("name", sorted(DOCS))
def test_docs_tables_are_generated_from_the_contract(name):
    text = (REPO / name).read_text()
    regions = contract.marked_regions(text)
    missing = DOCS[name] - set(regions)
    assert not missing, f"{name} lacks the <!-- contract:KIND --> ... <!-- /contract:KIND --> markers for {missing}"
    for kind, body in regions.items():
        assert body == contract.MARKDOWN[kind]() + "\n", (
            f"{name}: the {kind} table has drifted from the contract; regenerate: {contract.REGENERATE}")


def test_cli_check_names_a_stale_file_and_write_fixes_it(tmp_path, capsys):
    page = tmp_path / "node.md"
    page.write_text("# Node\n<!-- contract:topics -->\nold\n<!-- /contract:topics -->\nafter\n")
    assert contract.main(["--check", str(page)]) == 1
    assert str(page) in capsys.readouterr().err
    assert contract.main(["--write", str(page)]) == 0
    assert contract.main(["--check", str(page)]) == 0
    assert contract.marked_regions(page.read_text()) == {"topics": contract.markdown_topics() + "\n"}
    assert page.read_text().endswith("<!-- /contract:topics -->\nafter\n")


def test_markdown_tables_have_one_row_per_entry_and_no_stray_html():
    for table, count in ((contract.markdown_topics(), len(contract.TOPICS)),
                         (contract.markdown_parameters(), len(PARAMETERS))):
        rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
        assert len(rows) == count
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in rows}
        assert len(widths) == 1, "a cell holds an unescaped |"
        outside_code = re.sub(r"`[^`]*`", "", table)
        assert "<" not in outside_code.replace("&lt;", ""), "a < outside a code span opens an HTML tag"


def test_every_parameter_is_in_one_documented_section():
    sections = [spec.section for spec in PARAMETERS]
    assert all(sections), [spec.name for spec in PARAMETERS if not spec.section]
    # Sections are contiguous in the table, so each is written once in config/segment.yaml.
    seen = [s for i, s in enumerate(sections) if i == 0 or sections[i - 1] != s]
    assert len(seen) == len(set(seen)), seen


def test_topic_encodings_are_the_codecs():
    from rgbd_fusion_seg.serving.image_codec import AUX_ENCODINGS, COLOUR_ENCODINGS

    topics = {topic.name: topic for topic in contract.TOPICS}
    assert set(ENCODING.findall(topics["rgb/image"].content)) == set(COLOUR_ENCODINGS)
    by_modality = dict(part.strip().split(":", 1) for part in topics["aux/image"].content.split(";")[:2])
    assert set(by_modality) == set(AUX_ENCODINGS)
    for modality, encodings in AUX_ENCODINGS.items():
        assert set(ENCODING.findall(by_modality[modality])) == set(encodings), modality


def test_contract_imports_nothing_heavy():
    """The launch file imports it: no torch, numpy, OpenCV or ROS client library behind it."""
    code = ("import sys, rgbd_fusion_seg.ros.contract; "
            "print(sorted({'torch', 'numpy', 'cv2', 'rclpy', 'yaml'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- the node itself -------------------------------------------------------------------------------------

CONFIGURATIONS = [
    {},
    {"outputs.overlay": True, "outputs.confidence": True, "transport.rgb": "compressed",
     "transport.aux": "compressedDepth"},
    {"transport.aux": "compressed"},
]


def _type_name(msg_type) -> str:
    return "/".join(msg_type.__module__.split(".")[:2] + [msg_type.__name__])


@pytest.fixture(scope="module")
def ros_context():
    rclpy = pytest.importorskip("rclpy")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id_for(79))
    yield context
    rclpy.try_shutdown(context=context)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGURATIONS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_the_node_has_exactly_the_contracts_topics(ros_context, config):
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from rgbd_fusion_seg.ros.segment_node import SegmentNode

    node = SegmentNode(context=ros_context, namespace="contract",
                       parameter_overrides=[Parameter(name, value=value) for name, value in config.items()])
    try:
        expected = {(node.resolve_topic_name(t.name), t.direction, t.type) for t in contract.topics_for(config)}
        builtin = {"/rosout", "/parameter_events"}
        found = {(s.topic_name, "in", _type_name(s.msg_type)) for s in node.subscriptions}
        found |= {(p.topic_name, "out", _type_name(p.msg_type)) for p in node.publishers if p.topic_name not in builtin}
        assert found == expected
        for subscription in node.subscriptions:
            if not config:  # the defaults the table states: auto, best effort while no publisher offers more
                assert subscription.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                assert subscription.qos_profile.depth == 5
        wanted = contract.OUTPUT_QOS
        for publisher in node.publishers:
            if publisher.topic_name not in builtin:
                qos = publisher.qos_profile
                assert (qos.reliability, qos.durability, qos.depth) == (
                    ReliabilityPolicy[wanted["reliability"].upper()], DurabilityPolicy[wanted["durability"].upper()],
                    wanted["depth"]), publisher.topic_name
    finally:
        node.shutdown()
        node.destroy_node()
