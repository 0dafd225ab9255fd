"""Shared fixtures for the lthfast.detection tests: tiny shapes datasets."""
import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from lthfast.detection import make_shapes  # noqa: E402

TINY = dict(n_train=6, n_val=4, image_size=64, seed=3)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "tiny", **TINY)


@pytest.fixture(scope="session")
def medium_root(tmp_path_factory):
    """Enough objects to check the size and class distributions."""
    return make_shapes(tmp_path_factory.mktemp("shapes") / "medium", n_train=150, n_val=2,
                       image_size=128, seed=0)
