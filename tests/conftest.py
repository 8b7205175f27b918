"""Shared fixtures: the real scikit-learn digits set as small in-memory splits, and a trained tiny model."""

import os

import pytest
import torch

for _k, _v in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0",
               # tiny models: one thread each is fastest, and pipeline subprocesses must not oversubscribe 2 cores
               "OMP_NUM_THREADS": "1",
               # the suite's own model factories (tests.*:factory) are code the test author trusts; every
               # other module named by a bundle stays refused (tests/idap/test_bundle_trust.py)
               "IDAP_TRUSTED_MODULES": "tests"}.items():
    os.environ.setdefault(_k, _v)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from idap.data import load_dataset

    return load_dataset("digits", seed=0, calibration_size=128, validation_size=256)


@pytest.fixture(scope="session")
def trained_resnet20(digits):
    """A ResNet-20 trained for a few seconds on digits (8x8): good enough to make accuracy meaningful."""
    from idap.models import create_model
    from idap.prune.recovery import train

    torch.manual_seed(0)
    model = create_model("resnet20", digits.num_classes, digits.in_channels, digits.image_size)
    train(model, digits.train_x, digits.train_y, epochs=6, batch_size=64, lr=0.05, seed=0, device=torch.device("cpu"))
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

