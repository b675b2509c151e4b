import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.pop("ICL_DYNAMICS_FAULT", None)


def pytest_configure(config):
    config.addinivalue_line("markers", "user_defaults: run with the caller's JAX defaults (float32), as a "
                                       "notebook user would; the package must switch to float64 by itself")


@pytest.fixture(autouse=True)
def _float64(request):
    """Unit tests build float64 arrays of their own, so they run in JAX's x64 mode, as a float64 user's notebook
    would. Tests marked ``user_defaults`` (end to end: CLI, runner, sweeps, reproduce) run without it, so they
    check that every entry point turns float64 on where it computes."""
    if request.node.get_closest_marker("user_defaults"):
        yield
        return
    import jax

    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def driver():
    """Headless Chromium (tests/browser.py); skips with the reason where it cannot start."""
    import shutil

    from browser import start_driver

    d, profile = start_driver()
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from browser import artifacts_dir

    return artifacts_dir(tmp_path_factory)
