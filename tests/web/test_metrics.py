"""core.metrics: the registry and its Prometheus text exposition (format 0.0.4)."""

from __future__ import annotations

import threading

import pytest

from core.metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Metrics, Registry


def test_counter_with_labels_renders_help_type_and_samples() -> None:
    registry = Registry()
    plays = registry.counter("plays_total", "Sounds played.", ("result",))
    plays.inc(result="ok")
    plays.inc(2, result="ok")
    plays.inc(result="failed")
    assert plays.value(result="ok") == 3
    assert registry.render() == (
        "# HELP plays_total Sounds played.\n"
        "# TYPE plays_total counter\n"
        'plays_total{result="failed"} 1\n'
        'plays_total{result="ok"} 3\n'
    )


def test_counter_refuses_to_go_down_and_wrong_labels() -> None:
    counter = Counter("c_total", "c", ("a",))
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(-1, a="x")
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(b="x")
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter("bad name", "x")
    with pytest.raises(ValueError, match="invalid label name"):
        Counter("ok", "x", ("__reserved",))


def test_unlabelled_metrics_start_at_zero() -> None:
    registry = Registry()
    registry.gauge("clients", "Connected clients.")
    assert "clients 0\n" in registry.render()


def test_gauge_set_inc_dec_remove() -> None:
    gauge = Gauge("queue_length", "Queued.", ("guild",))
    gauge.set(4, guild=1)
    gauge.inc(guild=1)
    gauge.dec(2, guild=1)
    gauge.set(7, guild=2)
    assert gauge.value(guild=1) == 3
    gauge.remove(guild=2)
    assert gauge.samples() == ['queue_length{guild="1"} 3']


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    hist = Histogram("latency_seconds", "Latency.", ("route",), buckets=(0.1, 0.5, 1))
    for value in (0.05, 0.1, 0.3, 2.0):
        hist.observe(value, route="/x")
    assert hist.count(route="/x") == 4
    assert hist.total(route="/x") == pytest.approx(2.45)
    assert hist.samples() == [
        'latency_seconds_bucket{route="/x",le="0.1"} 2',
        'latency_seconds_bucket{route="/x",le="0.5"} 3',
        'latency_seconds_bucket{route="/x",le="1"} 3',
        'latency_seconds_bucket{route="/x",le="+Inf"} 4',
        'latency_seconds_sum{route="/x"} 2.45',
        'latency_seconds_count{route="/x"} 4',
    ]
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "h", ("le",))


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    counter = registry.counter("odd_total", 'Help with \\ and\nnewline "quoted".', ("v",))
    counter.inc(v='a"b\\c\nd')
    text = registry.render()
    assert '# HELP odd_total Help with \\\\ and\\nnewline "quoted".' in text
    assert 'odd_total{v="a\\"b\\\\c\\nd"} 1' in text


def test_duplicate_registration_is_refused() -> None:
    registry = Registry()
    registry.counter("x_total", "x")
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("x_total", "x")


def test_counting_from_many_threads_loses_nothing() -> None:
    counter = Counter("n_total", "n")

    def work() -> None:
        for _ in range(10_000):
            counter.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value() == 40_000


def test_metrics_defines_the_soundboard_metrics() -> None:
    metrics = Metrics()
    metrics.plays.inc(result="ok")
    metrics.play_start_latency.observe(0.2)
    metrics.queue_length.set(3, guild="123")
    metrics.extraction_jobs.set(2, status="pending")
    text = metrics.render()
    for name in (
        "soundboard_http_request_duration_seconds",
        "soundboard_credits_spent_total",
        "soundboard_plays_total",
        "soundboard_play_start_latency_seconds",
        "soundboard_queue_length",
        "soundboard_extraction_jobs",
    ):
        assert f"# TYPE {name} " in text
    assert 'soundboard_queue_length{guild="123"} 3' in text
    assert 'soundboard_extraction_jobs{status="pending"} 2' in text
    assert "soundboard_play_start_latency_seconds_count 1" in text
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
