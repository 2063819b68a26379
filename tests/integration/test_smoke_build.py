import pytest

from serve_app.core.bundle import load_bundle

pytestmark = pytest.mark.slow


def test_built_fixture_gives_a_loadable_bundle(built):
    bundle = load_bundle(built.bundle)
    assert bundle.index.ntotal == len(bundle.items.item_ids) > 0
    assert (built.artifacts / "current").resolve() == built.bundle
