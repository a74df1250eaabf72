"""ros/diagnostics.py and ros/qos.py advice: the node's status, stale-input checks and warning texts from
constructed counters and states (no node, no DDS)."""

from __future__ import annotations

import pytest

from instance_seg_ros.ros.diagnostics import (
    ERROR,
    OK,
    WARN,
    InputWatch,
    NodeStats,
    NodeView,
    check_inputs,
    frame_id_mismatch_text,
    missing_input_text,
    node_status,
    problem_totals,
    time_reset_warning,
)
from instance_seg_ros.ros.qos import LARGE_DATA_HINT, incompatible_qos_hint

STREAMS = ("image", "depth", "camera_info")
T0 = 1000.0  # monotonic seconds


# ---------------------------------------------------------------------------------------- stale inputs
def _watches() -> dict[str, InputWatch]:
    return {s: InputWatch(topic=f"/cam/{s}") for s in STREAMS}


def test_no_publisher_is_a_problem_only_after_the_timeout():
    w = _watches()
    none = dict.fromkeys(STREAMS, 0)
    assert check_inputs(w, none, T0 + 4.0, active_since=T0, stale_timeout=5.0) == []
    problems = check_inputs(w, none, T0 + 6.0, active_since=T0, stale_timeout=5.0)
    assert [p.key for p in problems] == ["no_publisher_image", "no_publisher_depth", "no_publisher_camera_info"]
    assert problems[0].summary == "no publisher on /cam/image"
    assert "remap the node's 'image' input" in problems[0].warning and "-r image:=/camera/..." in problems[0].warning


def test_silent_publisher_counts_from_when_it_appeared():
    w = _watches()
    pubs = {"image": 1, "depth": 1, "camera_info": 1}
    assert check_inputs(w, pubs, T0 + 100.0, active_since=T0, stale_timeout=5.0) == []  # publishers just appeared
    assert all(x.publisher_since == T0 + 100.0 for x in w.values())
    w["depth"].last_rx = T0 + 103.0
    w["camera_info"].last_rx = T0 + 106.0
    problems = check_inputs(w, pubs, T0 + 107.0, active_since=T0, stale_timeout=5.0)
    assert [p.summary for p in problems] == ["/cam/image silent for 7 s"]
    assert problems[0].key == "stale_image"
    assert problems[0].warning == "'/cam/image' has 1 publisher(s) but delivered nothing for 7 s. " + LARGE_DATA_HINT


def test_publisher_gone_resets_and_zero_timeout_disables():
    w = _watches()
    check_inputs(w, {"image": 2}, T0 + 1.0, active_since=T0, stale_timeout=5.0)
    assert w["image"].publisher_since == T0 + 1.0
    check_inputs(w, {"image": 0}, T0 + 2.0, active_since=T0, stale_timeout=5.0)
    assert w["image"].publisher_since is None
    assert check_inputs(w, dict.fromkeys(STREAMS, 0), T0 + 99.0, active_since=T0, stale_timeout=0.0) == []


# ---------------------------------------------------------------------------------------- status
def _active(**kw) -> NodeView:
    return NodeView(**{"state": "active", "streams": STREAMS, "model_loaded": True, **kw})


def _busy_stats() -> NodeStats:
    st = NodeStats(window=5.0)
    for i in range(11):  # 10 Hz for 1 s
        t = T0 + i * 0.1
        for s in STREAMS:
            st.tick(f"received.{s}", t)
        st.tick("frames_matched", t)
        st.inc("frames_processed")
        st.tick("frames_published", t)
        st.latency(40.0, 30.0, t)
    return st


def test_ok_status_reports_rates_latency_and_values_in_order():
    st = _busy_stats()
    view = _active(backlog=1, topics={s: f"/cam/{s}" for s in STREAMS}, publishers=dict.fromkeys(STREAMS, 1),
                   last_frame={"instances": 3, "frame_id": "cam"}, oom_retries=0)
    status = node_status(st, view, T0 + 1.0, since={})
    assert status.level == OK
    assert status.message == "10.0 Hz in, 10.0 Hz out, latency 40 ms"
    v = status.values
    assert v["state"] == "active" and v["model_loaded"] is True and v["frames_published"] == 11
    assert v["rate_hz.depth"] == pytest.approx(10.0) and v["latency_ms_max"] == 40.0
    assert v["input.image"] == "/cam/image" and v["publishers.camera_info"] == 1 and v["backlog"] == 1
    assert v["last_frame.instances"] == 3 and "last_problem" not in v
    keys = list(v)
    assert keys[:4] == ["state", "model_loaded", "input_rate_hz", "output_rate_hz"]
    assert keys.index("frames_rejected") < keys.index("received.image") < keys.index("pipeline_errors") \
        < keys.index("backlog") < keys.index("input.image") < keys.index("publishers.image") \
        < keys.index("last_frame.instances")
    assert status.totals == {"rejected": 0, "pipeline_errors": 0, "callback_errors": 0, "qos_incompatible": 0,
                             "skipped": 0}


def test_ok_without_latency_when_nothing_was_published():
    status = node_status(NodeStats(), _active(), T0, since={})
    assert (status.level, status.message) == (OK, "0.0 Hz in, 0.0 Hz out")
    assert "latency_ms_mean" not in status.values


def test_rejections_skips_input_problems_and_qos_warn_until_they_stop():
    st = NodeStats()
    st.inc("rejected.bad_depth", 2)
    st.inc("skipped.out_of_memory")
    st.inc("qos_incompatible")
    st.error("bad_depth: depth image encoding 'rgb8' is not supported")
    view = _active(input_problems=["/cam/image silent for 7 s"])
    status = node_status(st, view, T0, since={})
    assert status.level == WARN
    assert status.message == ("2 frame(s) rejected; 1 frame(s) skipped (out of memory); /cam/image silent for 7 s; "
                              "incompatible QoS")
    assert status.values["frames_rejected"] == 2 and status.values["rejected.bad_depth"] == 2
    assert status.values["last_problem"].startswith("bad_depth:")
    again = node_status(st, _active(), T0 + 1.0, since=status.totals)  # nothing new since
    assert again.level == OK


def test_errors_since_the_last_status_are_an_error():
    st = NodeStats()
    st.inc("pipeline_errors")
    st.inc("callback_errors")
    st.error("pipeline failed on the frame stamped 1.000 s: RuntimeError: boom")
    status = node_status(st, _active(), T0, since={})
    assert status.level == ERROR
    assert status.message == "2 error(s): pipeline failed on the frame stamped 1.000 s: RuntimeError: boom"
    assert node_status(st, _active(), T0, since=status.totals).level == OK
    assert problem_totals(st)["pipeline_errors"] == 1


def test_configure_error_and_inactive_states():
    st = NodeStats()
    view = NodeView(state="unconfigured", streams=STREAMS, configure_error="cannot configure: OSError: no weights")
    status = node_status(st, view, T0, since={})
    assert (status.level, status.message) == (ERROR, "cannot configure: OSError: no weights")
    assert status.values["model_loaded"] is False and status.values["rate_hz.image"] == 0.0
    status = node_status(st, NodeView(state="inactive", streams=STREAMS, model_loaded=True), T0, since={})
    assert (status.level, status.message) == (WARN, "inactive (not processing)")
    st.inc("rejected.bad_image")  # not active: the state is the message
    assert node_status(st, NodeView(state="inactive", streams=STREAMS), T0, since={}).message == \
        "inactive (not processing)"


# ---------------------------------------------------------------------------------------- texts
def test_input_problem_texts():
    assert frame_id_mismatch_text("cam", "cam", "cam") == ""
    text = frame_id_mismatch_text("cam", "depth_frame", "cam")
    assert "image ('cam'), depth ('depth_frame') and camera_info ('cam')" in text
    assert "input.frame_id_check:=false" in text
    text = missing_input_text("camera_info", "/cam/info", 1_500_000_000, 0.02, 1.0)
    assert text.startswith("the image stamped 1.500 s found no camera_info message on '/cam/info' within "
                           "sync.slop = 0.02 s")
    assert "(sync.max_age = 1 s); publish camera_info with the same stamps" in text
    assert "aligned_depth_to_color" in missing_input_text("depth", "/cam/depth", 0, 0.02, 1.0)
    text = time_reset_warning("/cam/image", "jump_back", 5_000_000_000, 1_000_000_000)
    assert text == ("Input time base restarted on '/cam/image': time jumped back (a looping bag or a restarted "
                    "simulation); stamp 1.000 s after 5.000 s. Queued messages were dropped and matching starts over.")


@pytest.mark.parametrize(
    ("policy", "other", "fragment"),
    [
        ("RELIABILITY_QOS_POLICY", "publisher", "qos.input_reliability:=best_effort"),
        ("RELIABILITY_QOS_POLICY", "subscriber", "qos.output_reliability"),
        ("DURABILITY_QOS_POLICY", "subscriber", "volatile durability"),
        ("DEADLINE_QOS_POLICY", "publisher", "Make the publisher's DEADLINE_QOS_POLICY policy compatible"),
    ],
)
def test_incompatible_qos_hint(policy, other, fragment):
    assert fragment in incompatible_qos_hint(policy, other)
