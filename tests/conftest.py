"""Pytest setup: 8 simulated CPU devices so sharding tests run anywhere, float32 everywhere."""

import os

# Must be set before jax is imported by any test module.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "torch: PyTorch parity test (opt-in, needs torch/torchvision)")
  config.addinivalue_line("markers", "slow: longer than the default suite allows (run with -m slow)")
