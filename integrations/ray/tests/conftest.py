"""A real local Ray cluster (2 CPUs, no dashboard, no auth token) per test module.

Ray's session files go to a private temp dir that is removed afterwards, and a
``~/.ray`` this session created is removed too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from poolkit.testing import build_tiny_checkpoint


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    import ray.data  # registers the Data API on the module

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_AUTH_MODE"] = "disabled"          # ray >= 2.5x enables token auth for new local clusters
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    home_ray = Path.home() / ".ray"
    had_home_ray = home_ray.exists()
    # Unix socket paths must stay short: a temp dir directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="pkray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not had_home_ray:
            shutil.rmtree(home_ray, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("ray-ckpt") / "encoder", "encoder"))

