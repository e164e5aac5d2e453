"""Shared test settings: one hypothesis profile for the whole suite.

`deadline=None` because Numba compiles kernels on first call (seconds), which is not a bug.
Set HYPOTHESIS_PROFILE=thorough for many more examples locally.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
