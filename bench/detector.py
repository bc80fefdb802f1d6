"""Detector benchmark: precision, recall and F1 on labelled synthetic series.

    python -m bench.detector [--seeds 1 2 3 4 5] [--weeks 24]

Each series is hourly with a daily rhythm (busy afternoons, quiet nights), a weekly rhythm
(quieter weekends) and noise, with spikes, drops and level shifts (6-24 hours) planted in the
evaluated weeks. The warm-up weeks before them play the seeded history: they enter every
baseline as they are, unjudged. Two scenarios:

- clean: the seeded history holds no incidents;
- incidents in history: it holds as many incidents as the evaluated weeks (seeding cannot
  know which past windows were incidents, so they stay in the baseline unflagged).

From then on every detector sees the series one point at a time, as a check does: its
baseline is the earlier points minus those it already flagged. A point is a true positive
when it is planted and flagged. Figures, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bench.common import Figure, Section
from pipectl.checks.anomaly import AnomalyConfig, comparable, detect
from pipectl.model import Sample

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
HOUR = timedelta(hours=1)
UTC_ZONE = ZoneInfo("UTC")


@dataclass(frozen=True)
class Series:
    values: list[float]
    labels: list[bool]
    evaluate_from: int


def synthetic(seed: int, weeks: int, warmup_weeks: int, dirty_history: bool = False) -> Series:
    """Rows per hour with daily and weekly rhythm, noise, and planted anomalies."""
    rng = random.Random(seed)
    hours = weeks * 7 * 24
    values: list[float] = []
    for i in range(hours):
        at = START + i * HOUR
        daily = 0.35 + 0.65 * math.exp(-(((at.hour - 14) / 4.5) ** 2))
        weekly = 0.6 if at.weekday() >= 5 else 1.0
        level = 200 * daily * weekly
        values.append(max(0.0, rng.gauss(level, 0.06 * level + 2)))
    labels = [False] * hours
    start = warmup_weeks * 7 * 24
    taken: set[int] = set()

    def free(first: int, length: int) -> bool:
        return all(j not in taken and j < hours for j in range(first - 3, first + length + 3))

    def plant(kind: str, count: int, low: int = start, high: int = hours - 30) -> None:
        placed = 0
        while placed < count:
            first = rng.randrange(low, high)
            length = rng.randint(6, 24) if kind == "shift" else 1
            if not free(first, length):
                continue
            factor = {
                "spike": rng.uniform(1.6, 3.0),
                "drop": rng.uniform(0.05, 0.5),
                "shift": rng.choice([rng.uniform(1.5, 1.8), rng.uniform(0.45, 0.65)]),
            }[kind]
            for j in range(first, first + length):
                values[j] *= factor
                labels[j] = True
                taken.add(j)
            placed += 1

    plant("spike", 25)
    plant("drop", 25)
    plant("shift", 6)
    if dirty_history:  # incidents before the evaluated weeks, for the baseline only
        history_weeks = weeks - warmup_weeks
        for kind, count in (("spike", 25), ("drop", 25), ("shift", 6)):
            plant(kind, count, max(0, start - history_weeks * 7 * 24), start - 30)
    return Series(values, labels, start)


Flagger = Callable[[Series], list[bool]]


def ours(config: AnomalyConfig) -> Flagger:
    """checks.anomaly as a check runs it: seasonal comparable points, flagged ones excluded."""

    def flag(series: Series) -> list[bool]:
        samples = [
            Sample("s", START + i * HOUR, value, {}, "seed")
            for i, value in enumerate(series.values[: series.evaluate_from])
        ]
        flags = [False] * series.evaluate_from
        for i in range(series.evaluate_from, len(series.values)):
            now, value = START + i * HOUR, series.values[i]
            baseline = comparable(samples, now, config, UTC_ZONE, HOUR)
            flagged = detect(value, baseline, config).flagged
            samples.append(Sample("s", now, value, {}, "live", flagged))
            flags.append(flagged)
        return flags

    return flag


def rolling_zscore(window: int, limit: float = 3.0) -> Flagger:
    """The plain 3-sigma z-score against the trailing `window` points (no seasonality)."""

    def flag(series: Series) -> list[bool]:
        kept = list(series.values[: series.evaluate_from])
        flags = [False] * series.evaluate_from
        for value in series.values[series.evaluate_from :]:
            recent = kept[-window:]
            flagged = False
            if len(recent) >= 14:
                mean, sd = statistics.fmean(recent), statistics.stdev(recent)
                flagged = sd > 0 and abs(value - mean) / sd > limit
            if not flagged:
                kept.append(value)
            flags.append(flagged)
        return flags

    return flag


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float


def score(series: Series, flags: Sequence[bool]) -> Score:
    pairs = list(zip(series.labels, flags, strict=True))[series.evaluate_from :]
    tp = sum(1 for label, flag in pairs if label and flag)
    fp = sum(1 for label, flag in pairs if flag and not label)
    fn = sum(1 for label, flag in pairs if label and not flag)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(precision, recall, f1)


def detectors(weeks: int) -> dict[str, Flagger]:
    history = timedelta(weeks=weeks)
    return {
        "ours: mad 3.5, hour_of_week (default method)": ours(
            AnomalyConfig(seasonality="hour_of_week", history=history)
        ),
        "ours: zscore 3.0, hour_of_week (same baseline)": ours(
            AnomalyConfig(method="zscore", seasonality="hour_of_week", history=history)
        ),
        "ours: mad 3.5, hour_and_daytype, 4 weeks": ours(
            AnomalyConfig(seasonality="hour_and_daytype", history=timedelta(weeks=4), min_points=8)
        ),
        "ours: mad 3.5, hour_and_daytype, 8 weeks (preset)": ours(
            AnomalyConfig(seasonality="hour_and_daytype", history=timedelta(weeks=8))
        ),
        "ours: mad 3.5, hour_of_day (ignores weekends)": ours(
            AnomalyConfig(seasonality="hour_of_day", history=history)
        ),
        "plain 3-sigma z-score, trailing 7 days": rolling_zscore(7 * 24),
    }


def _mean(found: Sequence[Score]) -> Score:
    return Score(
        statistics.fmean(s.precision for s in found),
        statistics.fmean(s.recall for s in found),
        statistics.fmean(s.f1 for s in found),
    )


def evaluate(seeds: Sequence[int], weeks: int, warmup: int) -> dict[str, dict[str, Score]]:
    """Mean scores per scenario and detector."""
    out: dict[str, dict[str, Score]] = {}
    for scenario, dirty in (("clean history", False), ("incidents in history", True)):
        totals: dict[str, list[Score]] = {}
        for seed in seeds:
            series = synthetic(seed, weeks, warmup, dirty_history=dirty)
            for name, flagger in detectors(warmup).items():
                totals.setdefault(name, []).append(score(series, flagger(series)))
        out[scenario] = {name: _mean(found) for name, found in totals.items()}
    return out


def run(seeds: Sequence[int], weeks: int = 30, warmup: int = 20) -> Section:
    """The detector figures as a report section (means over the seeds)."""
    started = time.perf_counter()
    found = evaluate(seeds, weeks, warmup)
    baseline_name = "plain 3-sigma z-score, trailing 7 days"
    ours_name = "ours: mad 3.5, hour_and_daytype, 8 weeks (preset)"
    figures = []
    rows = []
    for scenario, scores in found.items():
        ours, plain = scores[ours_name], scores[baseline_name]
        figures.append(
            Figure(
                f"F1, preset detector, {scenario}",
                f"{ours.f1:.3f}",
                "above the z-score",
                f"{plain.f1:.3f} (3-sigma z-score)",
                f"precision {ours.precision:.3f} / recall {ours.recall:.3f}"
                f" vs {plain.precision:.3f} / {plain.recall:.3f}",
            )
        )
        rows += [
            [scenario, name, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}"]
            for name, s in scores.items()
        ]
    return Section(
        "detector quality (labelled seasonal series)",
        figures,
        [
            f"hourly series of {weeks} weeks ({warmup} weeks of seeded history), seeds"
            f" {' '.join(map(str, seeds))}, means over seeds; took"
            f" {time.perf_counter() - started:.0f} s."
        ],
        tables=[
            ("every detector (means)", ["scenario", "detector", "precision", "recall", "F1"], rows)
        ],
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="precision, recall and F1 of the detectors")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--weeks", type=int, default=30, help="length of each series")
    parser.add_argument("--warmup", type=int, default=20, help="weeks of seeded history")
    parser.add_argument("--quiet", action="store_true", help="only the means")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    names = list(detectors(args.warmup))
    width = max(len(n) for n in names)
    header = f"{'':>4}  {'detector':<{width}}  {'prec':>5}  {'rec':>5}  {'F1':>5}"
    print(
        f"hourly series of {args.weeks} weeks: {args.warmup} weeks of seeded history, "
        f"{args.weeks - args.warmup} evaluated; seeds {' '.join(map(str, args.seeds))}"
    )
    for scenario, dirty in (("clean history", False), ("incidents in history", True)):
        totals: dict[str, list[Score]] = {name: [] for name in names}
        print(f"\n{scenario}")
        if not args.quiet:
            print(header.replace("    ", "seed", 1))
        for seed in args.seeds:
            series = synthetic(seed, args.weeks, args.warmup, dirty_history=dirty)
            for name, flagger in detectors(args.warmup).items():
                result = score(series, flagger(series))
                totals[name].append(result)
                if not args.quiet:
                    print(_row(str(seed), name, width, result))
        print(header.replace("    ", "mean", 1))
        for name, found in totals.items():
            print(_row("", name, width, _mean(found)))
    print(f"\n({time.perf_counter() - started:.0f}s)")


def _row(first: str, name: str, width: int, result: Score) -> str:
    return (
        f"{first:>4}  {name:<{width}}  {result.precision:5.3f}  {result.recall:5.3f}"
        f"  {result.f1:5.3f}"
    )


if __name__ == "__main__":
    main()
