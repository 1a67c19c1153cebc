"""ApproximateTimePairer: message_filters' ApproximateTimeSynchronizer semantics for two streams."""
import numpy as np
import pytest

from rgbd_fusion_seg.serving.pairing import ApproximateTimePairer
from ros_helpers import read_bag_images

MS = 1_000_000


def feed(pairer, events):
    """events: [(stream, stamp_ns)] in arrival order -> [(stamp0, stamp1)] of the pairs made."""
    pairs = []
    for stream, stamp in events:
        pair = pairer.add(stream, stamp, (stream, stamp))
        if pair is not None:
            assert pair.first[0] == 0 and pair.second[0] == 1
            pairs.append((pair.first_stamp, pair.second_stamp))
    return pairs


def jittered_streams(frames=60, period_ms=1000 / 15, jitter_ms=6.0, seed=0):
    """Colour at 15 Hz; depth with the same nominal stamps plus up to 6 ms jitter, arriving shortly after."""
    rng = np.random.default_rng(seed)
    events = []
    for index in range(frames):
        colour = int(1_700_000_000 * 1e9 + index * period_ms * MS)
        depth = colour + int(rng.uniform(-jitter_ms, jitter_ms) * MS)
        events.append((colour + int(rng.uniform(0, 3) * MS), 0, colour))  # (arrival, stream, stamp)
        events.append((max(colour, depth) + int(rng.uniform(0, 3) * MS), 1, depth))
    return [(stream, stamp) for _, stream, stamp in sorted(events)]


def test_jittered_streams_all_pair_with_their_partner():
    pairer = ApproximateTimePairer(queue_size=10, slop=0.05)
    events = jittered_streams()
    pairs = feed(pairer, events)
    assert len(pairs) == 60
    assert all(abs(a - b) <= 6 * MS for a, b in pairs)  # never the neighbouring frame (66 ms away)
    assert pairer.counts.pairs == 60 and pairer.counts.dropped == [0, 0] and pairer.counts.received == [60, 60]
    assert pairer.pending() == (0, 0)


def test_closest_candidate_wins():
    pairer = ApproximateTimePairer(queue_size=10, slop=0.05)
    feed(pairer, [(1, 100 * MS), (1, 130 * MS), (1, 160 * MS)])
    assert feed(pairer, [(0, 135 * MS)]) == [(135 * MS, 130 * MS)]
    assert pairer.pending() == (0, 2)  # the others stay queued for later partners
    assert feed(pairer, [(0, 95 * MS)]) == [(95 * MS, 100 * MS)]


def test_slop_is_inclusive_and_exact_mode_needs_equal_stamps():
    pairer = ApproximateTimePairer(queue_size=10, slop=0.01)
    assert feed(pairer, [(0, 0), (1, 10 * MS)]) == [(0, 10 * MS)]
    assert feed(pairer, [(0, 100 * MS), (1, 110 * MS + 1)]) == []
    exact = ApproximateTimePairer(queue_size=10, slop=0.05, exact=True)
    assert feed(exact, [(0, 5), (1, 6), (1, 5)]) == [(5, 5)]
    assert exact.pending() == (0, 1)


def test_a_stream_that_never_pairs_is_evicted_and_counted():
    pairer = ApproximateTimePairer(queue_size=4, slop=0.05)
    events = [(0, i * 100 * MS) for i in range(10)] + [(1, 10_000 * MS + i * 100 * MS) for i in range(3)]
    assert feed(pairer, events) == []
    assert pairer.counts.dropped == [6, 0]  # 10 colour frames through a queue of 4
    assert pairer.pending() == (4, 3)
    assert pairer.counts.received == [10, 3]


def test_out_of_order_arrival_still_pairs():
    pairer = ApproximateTimePairer(queue_size=10, slop=0.02)
    events = [(0, 200 * MS), (0, 100 * MS), (1, 101 * MS), (1, 199 * MS), (0, 300 * MS), (1, 298 * MS)]
    assert sorted(feed(pairer, events)) == [(100 * MS, 101 * MS), (200 * MS, 199 * MS), (300 * MS, 298 * MS)]


def test_queue_overflow_evicts_the_oldest_even_if_it_just_arrived():
    pairer = ApproximateTimePairer(queue_size=2, slop=0.01)
    feed(pairer, [(0, 200 * MS), (0, 300 * MS)])
    feed(pairer, [(0, 100 * MS)])  # older than everything queued: evicted at once
    assert pairer.counts.dropped == [1, 0]
    assert feed(pairer, [(1, 100 * MS)]) == []  # its partner arrives too late
    assert feed(pairer, [(1, 301 * MS)]) == [(300 * MS, 301 * MS)]


def test_same_stamp_replaces_and_counts():
    pairer = ApproximateTimePairer(queue_size=5, slop=0.01)
    pairer.add(0, 100, "first")
    pairer.add(0, 100, "second")
    assert pairer.counts.dropped == [1, 0]
    assert pairer.add(1, 100, "aux").first == "second"


def test_reconfigure_and_clear():
    pairer = ApproximateTimePairer(queue_size=5, slop=0.01)
    feed(pairer, [(0, i * MS) for i in range(5)])
    pairer.configure(queue_size=2, slop=0.001)
    assert pairer.pending() == (2, 0) and pairer.counts.dropped == [3, 0]
    pairer.clear()
    assert pairer.pending() == (0, 0) and pairer.counts.dropped == [5, 0]
    with pytest.raises(ValueError):
        pairer.configure(queue_size=0, slop=0.1)
    with pytest.raises(ValueError):
        pairer.configure(queue_size=1, slop=-1)


def camera(start_ns, frames, period_ms=1000 / 15):
    """Colour then depth with equal stamps, `frames` of them from `start_ns`, as a driver publishes them."""
    events = []
    for index in range(frames):
        stamp = int(start_ns + index * period_ms * MS)
        events += [(0, stamp), (1, stamp)]
    return events


def recording_jumps():
    jumps = []
    return jumps, lambda stream, jump_ns, dropped: jumps.append((stream, round(jump_ns / 1e9, 3), dropped))


def test_a_burst_stamped_in_the_future_does_not_stop_pairing():
    """10 depth frames 1000 s ahead fill the queue; message_filters would then evict every correct depth frame
    on arrival (older than all queued) for 1000 s. The depth queue is dropped at the first step back."""
    jumps, on_jump = recording_jumps()
    pairer = ApproximateTimePairer(queue_size=10, slop=0.05, on_stamp_jump=on_jump)
    now = 1_700_000_000 * 10**9
    assert feed(pairer, camera(now, 15)) and pairer.pending() == (0, 0)
    assert feed(pairer, [(1, now + 1000 * 10**9 + i * 66 * MS) for i in range(10)]) == []
    good = camera(now + 2 * 10**9, 30)
    pairs = feed(pairer, good)
    assert pairs == [(stamp, stamp) for stream, stamp in good if stream == 0]  # every frame, from the first
    assert jumps == [(1, 998.594, 10)]  # one jump, on the depth stream, its 10 future frames dropped
    assert pairer.counts.dropped == [0, 10]


def test_a_future_burst_before_any_good_frame_and_both_streams_looping():
    jumps, on_jump = recording_jumps()
    pairer = ApproximateTimePairer(queue_size=10, slop=0.05, on_stamp_jump=on_jump)
    feed(pairer, [(1, 5000 * 10**9 + i * 66 * MS) for i in range(12)])  # the very first depth frames
    assert len(feed(pairer, camera(0, 20))) == 20
    assert jumps == [(1, 5000.726, 10)]
    jumps.clear()
    # A bag of 2 s played in a loop: both streams go back 2 s at once; unpaired frames of the last loop
    # (a colour frame whose depth was lost) must not block the next loop.
    pairer = ApproximateTimePairer(queue_size=10, slop=0.05, on_stamp_jump=on_jump)
    loop = camera(0, 30)
    for _ in range(3):
        assert len(feed(pairer, loop + [(0, 2_100 * MS)])) == 30
    assert [stream for stream, _, _ in jumps] == [0, 1, 0, 1]


def test_small_steps_back_delay_pairing_by_at_most_their_size():
    jumps, on_jump = recording_jumps()
    pairer = ApproximateTimePairer(queue_size=10, slop=0.01, on_stamp_jump=on_jump)
    feed(pairer, [(1, 1000 * MS + i * 66 * MS) for i in range(10)])  # depth up to 1.6 s, colour never came
    good = camera(900 * MS, 30)  # 0.7 s back: under the threshold, so kept as message_filters would
    pairs = feed(pairer, good)
    assert jumps == []
    assert pairs and min(a for a, _ in pairs) - 900 * MS <= 700 * MS + 66 * MS
    assert pairs[-1] == (good[-2][1], good[-1][1])


def test_gaps_and_late_frames_are_not_jumps():
    jumps, on_jump = recording_jumps()
    pairer = ApproximateTimePairer(queue_size=10, slop=0.05, on_stamp_jump=on_jump)
    events = camera(0, 10) + camera(60 * 10**9, 10)  # a driver pausing for a minute
    events += [(0, 70 * 10**9 + i * 66 * MS) for i in range(5)] + [(1, 70 * 10**9 + i * 66 * MS) for i in range(5)]
    assert len(feed(pairer, events + jittered_streams())) == 25 + 60
    assert jumps == []


@pytest.mark.parametrize("bag, colour_topic, aux_topic, frames", [
    ("rgbd_indoor", "/camera/color/image_raw", "/camera/depth/image_rect_raw", 8),
    ("rgbt_layout", "/rgb/image_raw", "/thermal/image_raw", 6),
])
def test_real_bag_stamps_pair_every_colour_frame(bag, colour_topic, aux_topic, frames, bags):
    jumps, on_jump = recording_jumps()
    pairer = ApproximateTimePairer(queue_size=10, slop=0.05, on_stamp_jump=on_jump)
    events = [
        (0 if topic == colour_topic else 1, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        for topic, msg in read_bag_images(bags / bag, {colour_topic, aux_topic})
    ]
    pairs = feed(pairer, events)
    assert len(pairs) == frames
    assert sorted(a for a, _ in pairs) == sorted(s for stream, s in events if stream == 0)
    assert max(abs(a - b) for a, b in pairs) <= 20 * MS
    assert jumps == []
