"""Pytest setup: 8 simulated CPU devices so sharding tests run anywhere, float32 everywhere."""

import os

# Must be set before jax is imported by any test module; added to any XLA_FLAGS already set
# (launch/test.sh sets compile-time flags there).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "torch: PyTorch parity test (opt-in, needs torch/torchvision)")
  config.addinivalue_line("markers", "slow: longer than the default suite allows (run with -m slow)")


# Files with the longest tests first: pytest-xdist's loadfile hands files to the two workers in
# collection order, so a long file collected last would run alone at the end of the suite. Which
# long files overlap matters too (each has a two-process test: 2 more JAX processes on the same
# cores): this order gave 762-793 s on 2 cores, test_softlabel_gan.py and test_dimvida.py first
# 885 s (2026-12-06).
_LONG_FILES = ("test_diffmix.py", "test_dimvida.py", "test_lrgmm.py", "test_mvld_end_to_end.py",
               "test_softlabel_gan.py", "test_multiprocess.py",
               "test_gmm_em.py", "test_streamed_input.py", "test_param_sharding.py", "test_t2i.py")


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = item.path.name
    return _LONG_FILES.index(name) if name in _LONG_FILES else len(_LONG_FILES)
  items.sort(key=rank)  # stable: the order within a file is kept
