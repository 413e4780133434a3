"""Tests of harness/stats.py against published worked examples and scipy's own tests.

    pytest tests/test_stats.py

Worked examples: R's t.test on the classic `sleep` data (Student 1908; R's datasets package documents the
outputs quoted here), and modded-nanogpt's record announcement (13 runs, 3.27837 +- 0.00142, p = 0.00067;
docs/spec/benchmark-practice.md, modded-nanogpt).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness import referee, stats

# R: datasets::sleep, extra hours of sleep under drug 1 and drug 2 (same 10 patients).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
SLEEP_DIFF = [b - a for a, b in zip(SLEEP_1, SLEEP_2, strict=True)]

# Training times of two sets of runs (seconds), about 0.2% run-to-run noise as on one 8xH100 node.
RECORD_TIMES = [5952.0, 5931.0, 5949.0, 5960.0, 5938.0, 5944.0]
NEW_TIMES = [5850.0, 5869.0, 5842.0, 5861.0, 5855.0]


def test_welch_comparison_matches_r_on_the_sleep_data():
    # R> t.test(sleep$extra[1:10], sleep$extra[11:20])
    # t = -1.8608, df = 17.776, p-value = 0.07939; 95 percent CI: -3.3654832 0.2054832; means 0.75 2.33
    c = stats.compare_samples(SLEEP_1, SLEEP_2)
    assert (c.mean_a, c.mean_b) == (pytest.approx(0.75), pytest.approx(2.33))
    assert c.t == pytest.approx(-1.8608, abs=1e-4)
    assert c.df == pytest.approx(17.776, abs=1e-3)
    assert c.p_value == pytest.approx(0.07939, abs=1e-5)
    assert (c.diff_ci_low, c.diff_ci_high) == (pytest.approx(-3.3654832), pytest.approx(0.2054832))


def test_welch_comparison_matches_scipy_ttest_ind_on_timing_numbers():
    c = stats.compare_samples(RECORD_TIMES, NEW_TIMES)
    ref = sps.ttest_ind(RECORD_TIMES, NEW_TIMES, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert c.t == pytest.approx(ref.statistic)
    assert c.df == pytest.approx(ref.df)
    assert c.p_value == pytest.approx(ref.pvalue)
    assert (c.diff_ci_low, c.diff_ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    greater = sps.ttest_ind(RECORD_TIMES, NEW_TIMES, equal_var=False, alternative="greater")
    assert c.p_greater == pytest.approx(greater.pvalue)


def test_ratio_interval_holds_exactly_the_ratios_welch_does_not_reject():
    # Fieller by inversion: at each end, scipy's Welch test of a against r*b sits exactly at p = 0.05,
    # inside it does not reject, just outside it does.
    c = stats.compare_samples(RECORD_TIMES, NEW_TIMES)
    assert c.ratio == pytest.approx(np.mean(RECORD_TIMES) / np.mean(NEW_TIMES))
    assert c.ratio_ci_low < c.ratio < c.ratio_ci_high

    def welch_p(r: float) -> float:
        return sps.ttest_ind(RECORD_TIMES, [r * x for x in NEW_TIMES], equal_var=False).pvalue

    for end in (c.ratio_ci_low, c.ratio_ci_high):
        assert welch_p(end) == pytest.approx(0.05, abs=1e-9)
    assert welch_p(c.ratio) == pytest.approx(1.0)
    width = c.ratio_ci_high - c.ratio_ci_low
    assert welch_p(c.ratio_ci_low - 0.01 * width) < 0.05 < welch_p(c.ratio_ci_low + 0.01 * width)


def test_ratio_interval_agrees_with_the_delta_method_when_noise_is_small():
    # For a CV of 0.2% the ratio's sampling distribution is nearly normal: the delta method on the log ratio
    # (an independent approximation) must agree to well within the interval's width.
    c = stats.compare_samples(RECORD_TIMES, NEW_TIMES)
    ma, mb = np.mean(RECORD_TIMES), np.mean(NEW_TIMES)
    va, vb = np.var(RECORD_TIMES, ddof=1) / len(RECORD_TIMES), np.var(NEW_TIMES, ddof=1) / len(NEW_TIMES)
    se_log = math.sqrt(va / ma**2 + vb / mb**2)
    q = sps.t.ppf(0.975, c.df)
    low, high = c.ratio * math.exp(-q * se_log), c.ratio * math.exp(q * se_log)
    assert c.ratio_ci_low == pytest.approx(low, rel=2e-4)
    assert c.ratio_ci_high == pytest.approx(high, rel=2e-4)


def test_ratio_interval_is_nan_when_the_denominator_could_be_zero():
    c = stats.compare_samples([1.0, 2.0, 3.0], [-1.0, 0.5, 1.0])
    assert math.isnan(c.ratio_ci_low) and math.isnan(c.ratio_ci_high)


def test_summary_matches_r_paired_t_interval_on_the_sleep_differences():
    # R> t.test(extra ~ group, data = sleep, paired = TRUE): mean difference -1.58,
    # 95 percent CI -2.4598858 -0.7001142 (here the differences are drug 2 minus drug 1, so the sign flips).
    s = stats.summarize(SLEEP_DIFF)
    assert s.n == 10
    assert s.mean == pytest.approx(1.58)
    assert s.sd == pytest.approx(np.std(SLEEP_DIFF, ddof=1))
    assert (s.ci_low, s.ci_high) == (pytest.approx(0.7001142), pytest.approx(2.4598858))


def test_one_sample_greater_matches_r_and_scipy_on_the_sleep_differences():
    # R (paired, two-sided): t = -4.0621, df = 9, p-value = 0.002833; one-sided is half of it.
    t, p = stats.one_sample_greater(SLEEP_DIFF, 0.0)
    assert t == pytest.approx(4.0621, abs=1e-4)
    assert p == pytest.approx(0.002833 / 2, abs=1e-6)
    assert p == pytest.approx(sps.ttest_1samp(SLEEP_DIFF, 0.0, alternative="greater").pvalue)


def test_modded_nanogpt_record_example_gives_its_published_p_value():
    # 13 runs with mean 3.27837 and sd 0.00142, tested for mean loss below 3.28: p = 0.00067. Any 13 values
    # with that mean and sd give the same t; the published mean and sd are rounded, which moves p within about
    # 0.000654-0.000721, hence the tolerance. "Loss below 3.28" is "minus loss above -3.28".
    z = np.linspace(-1.0, 1.0, 13)
    losses = 3.27837 + 0.00142 * (z - z.mean()) / z.std(ddof=1)
    _, p = stats.one_sample_greater(-losses, -3.28)
    assert p == pytest.approx(0.00067, abs=5e-5)


def test_one_run_has_a_mean_but_no_spread_interval_or_test():
    s = stats.summarize([0.26])
    assert (s.n, s.mean) == (1, 0.26)
    assert all(math.isnan(v) for v in (s.sd, s.ci_low, s.ci_high))
    assert all(math.isnan(v) for v in stats.one_sample_greater([0.26], 0.25))
    c = stats.compare_samples([1.0], [2.0, 3.0])
    assert c.diff == -1.5 and math.isnan(c.p_value)


@pytest.mark.parametrize("bad", [[], [0.25, float("nan")], [0.25, float("inf")]])
def test_bad_input_is_refused_with_a_message_that_says_what_is_wrong(bad):
    with pytest.raises(ValueError, match="at least one number|finite number"):
        stats.summarize(bad)


def test_task_means_summarise_each_label_over_the_runs_that_have_it():
    out = stats.task_means([{"copa": 0.2, "piqa": 0.4}, {"copa": 0.4}])
    assert list(out) == ["copa", "piqa"]
    assert out["copa"].mean == pytest.approx(0.3) and out["copa"].n == 2
    assert out["piqa"].n == 1


# ---------------------------------------------------------------------------------------------------------------
# The acceptance rule

TARGET = 0.256525
GOOD_CORES = [0.2625, 0.2660, 0.2600, 0.2640, 0.2615]  # mean 0.2628: t = 7.8 with df 4, p < 0.001


def test_an_entry_with_fewer_runs_than_the_minimum_is_not_judged():
    n = referee.MIN_RUNS - 1
    a = referee.assess(NEW_TIMES[:n], GOOD_CORES[:n], [0.718] * n, TARGET)
    assert not a.qualifies and not a.beats_record
    assert a.verdict == f"needs {referee.MIN_RUNS} runs, has {n}"


def test_mean_core_not_significantly_above_the_target_fails_the_rule():
    cores = [0.2512, 0.2677, 0.2560, 0.2600, 0.2540]  # mean 0.2578, sd 0.0065: p about 0.35
    a = referee.assess(NEW_TIMES, cores, [0.718] * 5, TARGET)
    expected_p = sps.ttest_1samp(cores, TARGET, alternative="greater").pvalue
    assert a.core_p == pytest.approx(expected_p) and expected_p > referee.ALPHA
    assert not a.qualifies and a.verdict.startswith("mean CORE not above")


def test_first_entry_of_a_track_is_judged_on_core_alone():
    a = referee.assess(NEW_TIMES, GOOD_CORES, [0.718] * 5, TARGET)
    assert a.qualifies and a.beats_record and a.vs_record is None
    assert a.time_h.mean == pytest.approx(np.mean(NEW_TIMES) / 3600)


def test_a_significantly_faster_entry_beats_the_record_with_its_speedup():
    a = referee.assess(NEW_TIMES, GOOD_CORES, [0.718] * 5, TARGET, record_times_s=RECORD_TIMES)
    assert a.beats_record
    assert a.vs_record.ratio == pytest.approx(np.mean(RECORD_TIMES) / np.mean(NEW_TIMES))


def test_a_faster_entry_inside_the_margin_does_not_beat_the_record():
    # 0.5% faster: significant with this little noise, but under the 1% margin for node-to-node differences.
    times = [t * 0.995 for t in RECORD_TIMES[:5]]
    a = referee.assess(times, GOOD_CORES, [0.718] * 5, TARGET, record_times_s=RECORD_TIMES)
    assert a.vs_record.p_greater < referee.ALPHA
    assert a.qualifies and not a.beats_record and "margin" in a.verdict


def test_an_entry_no_faster_than_the_record_does_not_beat_it():
    a = referee.assess(RECORD_TIMES[:5], GOOD_CORES, [0.718] * 5, TARGET, record_times_s=RECORD_TIMES)
    assert not a.beats_record and a.verdict.startswith("not faster than the record")


def test_an_entry_missing_a_training_time_is_summarised_without_it_and_does_not_qualify():
    a = referee.assess([*NEW_TIMES[:4], None], GOOD_CORES, [0.718] * 5, TARGET, record_times_s=RECORD_TIMES)
    assert not a.qualifies and not a.beats_record
    assert a.verdict == "training time missing in 1 of 5 runs"
    assert a.time_h.n == 4 and a.time_h.mean == pytest.approx(np.mean(NEW_TIMES[:4]) / 3600)
    assert referee.assess([None, None], [None, None], [None, None], TARGET).time_h is None
