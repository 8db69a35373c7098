"""The metrics registry on its own: what each delivery outcome counts, and where."""

from __future__ import annotations

import promtool
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import ALARM_KIND, REJECTION_FIELDS, GroupHistogram, Metrics, field_label


def series(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the registry renders."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def test_alarm_deliveries_count_as_alarms_not_as_a_sink() -> None:
    """The alarm worker's publishes, retries and give-ups have series of their own."""
    metrics = Metrics(process=False)
    metrics.delivered("@alarms", ALARM_KIND, 3, 0.1)
    metrics.retried("@alarms", ALARM_KIND)
    metrics.gave_up("@alarms", ALARM_KIND, 2)
    found = series(metrics)
    assert found[("bridge_alarms_published_total", ())] == 3
    assert found[("bridge_alarm_retries_total", ())] == 1
    assert found[("bridge_alarms_given_up_total", ())] == 2
    assert not [key for key in found if ("sink", "@alarms") in key[1]]


def test_a_sink_is_failing_from_a_failed_send_until_it_delivers() -> None:
    """`bridge_sink_failing` turns 1 on a retry and back to 0 on the next delivery."""
    metrics = Metrics(process=False)
    metrics.declare_sinks(["hook"])
    failing = ("bridge_sink_failing", (("sink", "hook"),))
    assert series(metrics)[failing] == 0
    metrics.retried("hook", "event")
    assert series(metrics)[failing] == 1
    metrics.delivered("hook", "event", 5, 2.0)
    found = series(metrics)
    assert found[failing] == 0
    assert found[("bridge_records_forwarded_total", (("sink", "hook"),))] == 5
    assert found[("bridge_delivery_seconds_count", (("sink", "hook"),))] == 1
    assert found[("bridge_sink_retries_total", (("sink", "hook"),))] == 1


def test_scraped_gauges_follow_their_sources() -> None:
    """Readiness, stored dead letters and heartbeats are read at each scrape."""
    metrics = Metrics(process=False)
    ready = {"subscribed": True, "spool_writable": True, "accepting": True}
    dead = {"event": 4}
    metrics.watch(
        lambda: 0,
        lambda: 0,
        lambda: True,
        lambda: False,
        readiness=lambda: ready,
        dead_letters=lambda: dead,
        heartbeats=lambda: {"intake": 0.5},
        heartbeat_limit=30.0,
    )
    found = series(metrics)
    assert found[("bridge_ready", ())] == 1
    assert found[("bridge_dead_letters_stored", (("kind", "event"),))] == 4
    assert found[("bridge_dead_letters_stored", (("kind", "payload"),))] == 0
    assert found[("bridge_heartbeat_age_seconds", (("component", "intake"),))] == 0.5
    ready["accepting"] = False
    dead["event"] = 0
    found = series(metrics)
    assert found[("bridge_ready", ())] == 0
    assert found[("bridge_ready_check", (("check", "accepting"),))] == 0
    assert found[("bridge_dead_letters_stored", (("kind", "event"),))] == 0


def test_promtool_accepts_a_populated_registry() -> None:
    """Names, types, units and HELP texts pass `promtool check metrics` (where installed)."""
    metrics = Metrics()
    metrics.declare_sinks(["file", "hook"])
    metrics.delivered("hook", "event", 1, 0.2)
    metrics.received.labels(disposition="processed").inc()
    metrics.rejections.labels(field="phone").inc()
    text = metrics.render().decode()
    assert "process_cpu_seconds_total" in text
    if promtool.promtool() is None:
        return
    result = promtool.check("check", "metrics", text=text)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_every_field_label_is_created_at_start() -> None:
    """Whatever path a rejection has, its label is one of the series that exist from start."""
    paths = ["phone", "spaceIds[3]", "profile.x", "events.add.eventTs", "zzz", "", "msgId"]
    assert {field_label(path) for path in paths} <= set(REJECTION_FIELDS)
    found = series(Metrics(process=False))
    assert all(found[("bridge_rejections_total", (("field", f),))] == 0 for f in REJECTION_FIELDS)


BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def rendered(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """A registry's samples but the creation time, which differs between two registries."""
    return [
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if not sample.name.endswith("_created")
    ]


@given(
    st.lists(
        st.lists(
            st.one_of(
                st.sampled_from([*BOUNDS, 0.0, 3.0, 1e9]),
                st.floats(min_value=0, max_value=10, allow_nan=False),
            ),
            max_size=20,
        ),
        max_size=6,
    )
)
def test_a_group_histogram_renders_as_the_library_histogram_of_the_same_values(
    groups: list[list[float]],
) -> None:
    """Values on a bound, between bounds and beyond the last, observed a group at a time:
    the same buckets, count and sum as `prometheus_client.Histogram` observing each."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    grouped = GroupHistogram("x_seconds", "Seconds", BOUNDS, ours)
    single = Histogram("x_seconds", "Seconds", buckets=BOUNDS, registry=theirs)
    for group in groups:
        grouped.observe_many(group)
        for value in group:
            single.observe(value)

    mine, library = rendered(ours), rendered(theirs)
    assert [(n, labels) for n, labels, _ in mine] == [(n, labels) for n, labels, _ in library]
    for (_, _, a), (_, _, b) in zip(mine, library, strict=True):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(b))
    assert "x_seconds_created" in generate_latest(ours).decode()


def test_the_processing_latency_is_created_at_zero_and_counts_each_message() -> None:
    """The intake's histogram exists before the first message and counts every one."""
    metrics = Metrics(process=False)
    assert series(metrics)[("bridge_processing_seconds_count", ())] == 0
    metrics.latency.observe_many([0.0004, 0.003, 7.0])
    metrics.latency.observe(0.001)
    found = series(metrics)
    assert found[("bridge_processing_seconds_count", ())] == 4
    assert found[("bridge_processing_seconds_bucket", (("le", "0.001"),))] == 2
    assert found[("bridge_processing_seconds_bucket", (("le", "2.5"),))] == 3
    assert found[("bridge_processing_seconds_bucket", (("le", "+Inf"),))] == 4
