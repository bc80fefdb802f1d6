"""The detector's invariants (hypothesis) and the choice of comparable points."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipectl.checks.anomaly import AnomalyConfig, center_and_scale, comparable, detect, windows
from pipectl.model import Sample

UTC_ZONE = ZoneInfo("UTC")
NOW = datetime(2025, 6, 4, 12, 0, tzinfo=UTC)

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
baselines = st.lists(values, min_size=3, max_size=60)
whole = st.integers(min_value=-10_000, max_value=10_000)
whole_baselines = st.lists(whole, min_size=5, max_size=40)
configs = st.builds(
    AnomalyConfig,
    method=st.sampled_from(["mad", "zscore"]),
    threshold=st.one_of(st.none(), st.floats(min_value=0.5, max_value=6)),
    min_points=st.integers(min_value=3, max_value=20),
    direction=st.sampled_from(["both", "up", "down"]),
    min_abs_change=st.sampled_from([0.0, 1.0, 50.0]),
    min_rel_change=st.sampled_from([0.0, 0.1, 0.5]),
)


@given(baseline=baselines, value=values, config=configs)
def test_a_value_inside_the_band_is_never_flagged(
    baseline: list[float], value: float, config: AnomalyConfig
) -> None:
    found = detect(value, baseline, config)
    if found.learning:
        return
    assert found.low is not None and found.high is not None
    assert found.low <= found.center <= found.high  # type: ignore[operator]
    if found.low <= value <= found.high:
        assert not found.flagged
    if found.flagged:
        assert abs(found.score or 0) > config.limit


@given(baseline=baselines, value=values, config=configs)
def test_below_min_points_is_learning_never_an_alert(
    baseline: list[float], value: float, config: AnomalyConfig
) -> None:
    short = baseline[: config.min_points - 1]
    found = detect(value, short, config)
    assert found.learning and not found.flagged
    assert (found.points, found.needed) == (len(short), config.min_points)
    assert found.low is None and found.high is None


@given(
    baseline=whole_baselines,
    value=whole,
    scale=st.integers(min_value=1, max_value=1000),
    shift=st.integers(min_value=-10_000, max_value=10_000),
    method=st.sampled_from(["mad", "zscore"]),
)
def test_verdict_does_not_depend_on_units_or_offset(
    baseline: list[int], value: int, scale: int, shift: int, method: str
) -> None:
    """x -> a*x + b (a > 0) changes neither the score nor the verdict (no floors set)."""
    assume(len(set(baseline)) > 1)  # a flat series falls back to a floor relative to its level
    config = AnomalyConfig(method=method, min_points=5)  # type: ignore[arg-type]
    plain = detect(float(value), [float(x) for x in baseline], config)
    moved = detect(
        float(scale * value + shift), [float(scale * x + shift) for x in baseline], config
    )
    assert plain.score is not None and moved.score is not None
    assert moved.score == pytest.approx(plain.score, rel=1e-6, abs=1e-6)
    if abs(abs(plain.score) - config.limit) > 1e-6:  # not on the knife's edge
        assert moved.flagged == plain.flagged


@given(baseline=baselines, value=values, config=configs)
def test_direction_is_respected(baseline: list[float], value: float, config: AnomalyConfig) -> None:
    found = detect(value, baseline, config)
    if not found.flagged:
        return
    assert found.center is not None
    if config.direction == "up":
        assert value > found.center
    if config.direction == "down":
        assert value < found.center


@given(baseline=baselines, value=values, config=configs)
def test_a_change_below_either_materiality_floor_stays_quiet(
    baseline: list[float], value: float, config: AnomalyConfig
) -> None:
    found = detect(value, baseline, config)
    if found.learning:
        return
    assert found.center is not None
    change = abs(value - found.center)
    if change <= config.min_abs_change or change <= config.min_rel_change * abs(found.center):
        assert not found.flagged


@given(level=st.floats(min_value=-1e6, max_value=1e6), n=st.integers(min_value=14, max_value=40))
def test_a_flat_series_does_not_divide_by_zero_and_ignores_a_wobble(level: float, n: int) -> None:
    config = AnomalyConfig()
    center, scale = center_and_scale([level] * n, "mad")
    assert center == level and scale > 0 and math.isfinite(scale)
    assert not detect(level, [level] * n, config).flagged
    wobble = level + abs(level) * 0.001
    assert not detect(wobble, [level] * n, config).flagged
    assert detect(level + abs(level) * 0.5 + 1, [level] * n, config).flagged


def test_mad_ignores_a_few_wild_points_where_the_zscore_is_blinded() -> None:
    """The baseline already holds two missed outliers: MAD still sees a 2x spike."""
    baseline = [100.0, 102, 98, 101, 99, 103, 97, 100, 101, 99, 100, 98, 102, 5000, 4000]
    mad = detect(200.0, baseline, AnomalyConfig())
    zscore = detect(200.0, baseline, AnomalyConfig(method="zscore"))
    assert mad.flagged and mad.direction == "up"
    assert not zscore.flagged


def test_mad_of_zero_falls_back_to_mean_absolute_deviation() -> None:
    baseline = [10.0] * 12 + [20.0, 0.0]  # MAD 0, mean absolute deviation > 0
    center, scale = center_and_scale(baseline, "mad")
    assert center == 10.0
    assert scale == pytest.approx((20 / 14) * math.sqrt(math.pi / 2))


# --- comparable points ----------------------------------------------------------------------


def _sample(ts: datetime, value: float, source: str = "live", anomaly: bool = False) -> Sample:
    return Sample("s", ts, value, {}, source, anomaly)


sources = st.sampled_from(["live", "seed", "backfill", "manual"])
offsets = st.integers(min_value=-2 * 24 * 60, max_value=30 * 24 * 60)  # minutes before NOW


@settings(max_examples=200)
@given(
    points=st.lists(st.tuples(offsets, values, sources, st.booleans()), max_size=80),
    seasonality=st.sampled_from(["none", "hour_of_day", "day_of_week", "hour_of_week"]),
)
def test_baseline_uses_only_earlier_live_or_seed_points_not_flagged(
    points: list[tuple[int, float, str, bool]], seasonality: str
) -> None:
    config = AnomalyConfig(seasonality=seasonality)  # type: ignore[arg-type]
    samples = [_sample(NOW - timedelta(minutes=m), v, s, a) for m, v, s, a in points]
    clean = [s for s in samples if s.source in ("live", "seed") and not s.anomaly and s.ts < NOW]
    window = timedelta(hours=1)
    chosen = comparable(samples, NOW, config, UTC_ZONE, window)
    assert chosen == comparable(clean, NOW, config, UTC_ZONE, window)
    # the point under test (and anything after it) never enters its own baseline
    with_self = [*samples, _sample(NOW, 1e9), _sample(NOW + timedelta(minutes=1), 1e9)]
    assert comparable(with_self, NOW, config, UTC_ZONE, window) == chosen


def test_hour_of_day_takes_one_value_per_day_at_the_same_hour() -> None:
    config = AnomalyConfig(seasonality="hour_of_day", history=timedelta(days=28))
    samples = []
    for day in range(1, 29):
        for minutes in (-20, 0, 20):  # three points near noon: their median counts once
            samples.append(_sample(NOW - timedelta(days=day, minutes=minutes), 100 + minutes))
        samples.append(_sample(NOW - timedelta(days=day, hours=6), 5000))  # other hours
    chosen = comparable(samples, NOW, config, UTC_ZONE, timedelta(hours=1))
    assert chosen == [100.0] * 28


def test_hour_of_day_follows_wall_clock_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2025, 4, 2, 12, 0, tzinfo=berlin)  # CEST; four weeks back is CET
    config = AnomalyConfig(seasonality="hour_of_day", history=timedelta(days=28))
    ranges = windows(now, config, berlin, timedelta(hours=1))
    for low, high in ranges:
        middle = (low + (high - low) / 2).astimezone(berlin)
        assert (middle.hour, middle.minute) == (12, 0)
    assert len(ranges) == 28


def test_day_of_week_and_hour_of_week_compare_with_earlier_weeks() -> None:
    for seasonality, slack in (("day_of_week", 12), ("hour_of_week", 0.5)):
        config = AnomalyConfig(seasonality=seasonality, history=timedelta(weeks=6))  # type: ignore[arg-type]
        ranges = windows(NOW, config, UTC_ZONE, timedelta(hours=1))
        assert [NOW - (low + (high - low) / 2) for low, high in ranges] == [
            timedelta(weeks=w) for w in range(6, 0, -1)
        ]
        assert all(high - low == timedelta(hours=2 * slack) for low, high in ranges)


def test_hour_and_daytype_compares_weekdays_with_weekdays_only() -> None:
    """A quiet weekend is normal for a weekend, and a weekday is judged against weekdays."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from pipectl.checks.anomaly import AnomalyConfig, comparable
    from pipectl.model import Sample

    config = AnomalyConfig(seasonality="hour_and_daytype", history=timedelta(days=28))
    start = datetime(2026, 10, 1, 14, tzinfo=UTC)
    samples = [
        Sample(
            "s",
            start + timedelta(days=d),
            20.0 if (start + timedelta(days=d)).weekday() >= 5 else 100.0,
        )
        for d in range(56)
    ]
    saturday = datetime(2026, 11, 21, 14, tzinfo=UTC)
    wednesday = datetime(2026, 11, 25, 14, tzinfo=UTC)
    weekend = comparable(samples, saturday, config, ZoneInfo("UTC"), timedelta(hours=1))
    weekday = comparable(samples, wednesday, config, ZoneInfo("UTC"), timedelta(hours=1))
    assert weekend and set(weekend) == {20.0}
    assert weekday and set(weekday) == {100.0}
    assert len(weekday) == 20  # four weeks of weekdays before the point under test
