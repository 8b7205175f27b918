"""Shared fixtures: the real scikit-learn digits set as small in-memory splits, and a trained tiny model.

Perturbed runs (``make test-robust``, tests/README.md) set these before pytest starts; unset, the suite runs as
it always has:

- ``IDAP_TEST_THREADS``: torch's intra-op threads (and OMP_NUM_THREADS for subprocesses), default 1;
- ``IDAP_TEST_SEED``: an offset added to the seeds of the shared fixtures and of the ``outcome`` tests
  (``base_seed()``), default 0;
- ``IDAP_TEST_MKLDNN=0``: turns oneDNN (mkldnn) kernels off, so float results come from other kernels.
"""

import os

import pytest
import torch

THREADS = int(os.environ.get("IDAP_TEST_THREADS", "1"))
SEED = int(os.environ.get("IDAP_TEST_SEED", "0"))
for _k, _v in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0",
               # tiny models: one thread each is fastest, and pipeline subprocesses must not oversubscribe 2 cores
               "OMP_NUM_THREADS": str(THREADS),
               # the suite's own model factories (tests.*:factory) are code the test author trusts; every
               # other module named by a bundle stays refused (tests/idap/test_bundle_trust.py)
               "IDAP_TRUSTED_MODULES": "tests"}.items():
    os.environ.setdefault(_k, _v)
torch.set_num_threads(THREADS)
if os.environ.get("IDAP_TEST_MKLDNN", "1") == "0":
    torch.backends.mkldnn.enabled = False


def base_seed(offset: int = 0) -> int:
    """The seed an outcome test uses: ``offset`` plus IDAP_TEST_SEED (0 unless a perturbed run sets it)."""
    return SEED + offset


_MARGINS: list[tuple[str, str, float, float, float]] = []


@pytest.fixture
def margin(request):
    """``margin(what, value, threshold)`` records how far an outcome test's measured value lies from the
    threshold it must clear (``above=False``: stay below); the session's end prints them all ("outcome
    margins"), so a perturbed run shows how close each came. It only records: the test asserts as before."""

    def record(what: str, value: float, threshold: float, *, above: bool = True) -> float:
        value, threshold = float(value), float(threshold)
        _MARGINS.append((request.node.nodeid, what, value, threshold, value - threshold if above else threshold - value))
        return value

    return record


def pytest_terminal_summary(terminalreporter):
    if not _MARGINS:
        return
    terminalreporter.section(f"outcome margins (threads={THREADS}, seed offset={SEED}, "
                             f"mkldnn={torch.backends.mkldnn.enabled})")
    for nodeid, what, value, threshold, room in _MARGINS:
        terminalreporter.write_line(f"{room:+9.3f}  {what}: {value:.3f} vs {threshold:.3f}  {nodeid}")


@pytest.fixture(scope="session")
def digits():
    from idap.data import load_dataset

    return load_dataset("digits", seed=base_seed(), calibration_size=128, validation_size=256)


@pytest.fixture(scope="session")
def trained_resnet20(digits):
    """A ResNet-20 trained for a few seconds on digits (8x8): good enough to make accuracy meaningful."""
    from idap.models import create_model
    from idap.prune.recovery import train

    torch.manual_seed(base_seed())
    model = create_model("resnet20", digits.num_classes, digits.in_channels, digits.image_size)
    train(model, digits.train_x, digits.train_y, epochs=6, batch_size=64, lr=0.05, seed=base_seed(), device=torch.device("cpu"))
    return model.eval()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """One real S3 endpoint (moto server on 127.0.0.1) for the session, stopped at its end; each test module
    makes its own bucket (``tests.integration.services.create_bucket``) and points boto3 at it with ``use_s3``."""
    from tests.integration.services import start_moto

    service = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield service
    finally:
        service.stop()

