"""Claims over seeds (jaxgen.io.report.compare_over_seeds): the unpaired and paired rules against
NumPy's means and standard deviations, the words the reports print, and the t2i report's use."""

import numpy as np
import pytest

from jaxgen.io.report import MIN_SEEDS, compare_over_seeds, comparison_words
from jaxgen.t2i import report as t2i_report


@pytest.mark.parametrize("a, b", [([0.6, 0.62, 0.61], [0.4, 0.41, 0.42]),
                                  ([0.25, 0.35, 0.30], [0.20, 0.29, 0.26]),
                                  ([0.1, 0.5, 0.2, 0.3], [0.3, 0.2, 0.25, 0.4])])
def test_compare_over_seeds_follows_numpy(a, b):
  seeds = list(range(len(a)))
  v = compare_over_seeds(a, b, seeds, seeds)
  a, b = np.array(a), np.array(b)
  d = a - b
  assert v["mean_difference"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
  assert v["beats_beyond_one_std"] == (a.mean() - a.std() > b.mean() + b.std())
  assert v["paired_mean"] == pytest.approx(d.mean(), abs=1e-12)
  assert v["paired_std"] == pytest.approx(d.std(), abs=1e-12)  # ddof 0
  assert v["beats_paired"] == (d.mean() - d.std() > 0) and v["wins"] == int((d > 0).sum())


def test_no_claim_from_too_few_or_different_seeds():
  one = compare_over_seeds([0.9], [0.1], [0], [0])
  assert not one["beats_beyond_one_std"] and not one["beats_paired"]
  assert comparison_words(one).startswith(f"not claimed: 1 seed(s), fewer than {MIN_SEEDS}")
  other = compare_over_seeds([0.9, 0.9, 0.9], [0.1, 0.1, 0.1], [0, 1, 2], [0, 1, 3])
  assert not other["beats_beyond_one_std"] and not other["beats_paired"]


def test_words_say_which_rule_holds():
  seeds = [0, 1, 2]
  assert comparison_words(compare_over_seeds([0.6, 0.62, 0.61], [0.4, 0.41, 0.42], seeds,
                                             seeds)).startswith("yes, by +0.200")
  assert comparison_words(compare_over_seeds([0.25, 0.35, 0.30], [0.20, 0.29, 0.26], seeds,
                                             seeds)).startswith("yes when paired by seed")
  assert comparison_words(compare_over_seeds([0.20, 0.29, 0.26], [0.25, 0.35, 0.30], seeds,
                                             seeds)).startswith("no, worse when paired")
  assert comparison_words(compare_over_seeds([0.3, 0.1, 0.2], [0.1, 0.3, 0.2], seeds,
                                             seeds)).startswith("not shown")


def test_t2i_fine_tuning_claim_is_paired_by_seed():
  """The t2i report's fine-tuning verdicts: unpaired as before, plus the paired comparison (a
  seed's fine-tuned and vanilla samples share their sampling noise)."""
  def acc(values):
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
  ev = {"vanilla": {"guided": {"class_accuracy": 0.2}, "unguided": {"class_accuracy": 0.1}},
        "sdedit": {"0.3": {"target_colour_rate": 0.1, "psnr_to_reference_db": 20.0,
                           "num_images": 72},
                   "0.9": {"target_colour_rate": 0.8, "psnr_to_reference_db": 12.0,
                           "num_images": 72}},
        "finetune": {"seeds": [0, 1, 2], "diff_gen": {"accuracy": acc([0.125, 0.215, 0.12])},
                     "real_gen": {"accuracy": acc([0.09, 0.115, 0.11])}}}
  claims = t2i_report.verdicts(ev)
  assert not claims["finetuning_improves_class_fidelity"]  # 0.153 - 0.044 < 0.105 + 0.011
  paired = claims["finetuned_vs_vanilla"]
  assert paired["beats_paired"] and paired["wins"] == 3
  assert paired["paired_mean"] == pytest.approx(np.mean([0.035, 0.1, 0.01]))
  # the unpaired claim is compare_over_seeds' rule, seed minimum included
  clear = dict(ev, finetune={"seeds": [0, 1, 2], "diff_gen": {"accuracy": acc([0.5, 0.52, 0.51])},
                             "real_gen": {"accuracy": acc([0.1, 0.11, 0.12])}})
  assert t2i_report.verdicts(clear)["finetuning_improves_class_fidelity"]
  one = dict(ev, finetune={"seeds": [0], "diff_gen": {"accuracy": acc([0.5])},
                           "real_gen": {"accuracy": acc([0.1])}})
  assert not t2i_report.verdicts(one)["finetuning_improves_class_fidelity"]


def test_sdedit_rate_may_lose_one_image_once_saturated():
  """The edit 'grows with s' when the target-colour rate ends higher than it starts and no step
  falls by more than one image of those counted (the default run's 68 then 67 of 72 at s = 0.7
  and 0.9 is saturation, not a falling edit); two images down, or no rise overall, is not."""
  n = 72
  assert t2i_report.rate_rises([27 / n, 61 / n, 68 / n, 67 / n], n)
  assert not t2i_report.rate_rises([27 / n, 61 / n, 68 / n, 66 / n], n)
  assert not t2i_report.rate_rises([30 / n, 30 / n], n)
  assert t2i_report.rate_rises([0.1, 0.2, 0.3, 0.4], n)


@pytest.mark.parametrize("solid, ceiling, reading", [
    (0.457, 0.556, "recognisable"),  # 0.82 of the autoencoder's ceiling
    (0.30, 0.556, "partly"),  # above 3/12, under 3/4 of the ceiling
    (0.181, 0.556, "weakly"),  # the EMA backbone's solids: under three times chance
    (0.24, 0.30, "weakly"),  # near the ceiling but under three times chance
])
def test_t2i_reading_of_the_solids(solid, ceiling, reading):
  assert t2i_report.shape_reading(solid, ceiling) == reading
