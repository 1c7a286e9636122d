"""voxserve/heap.py: start-up's objects out of the cyclic collector while a long-running process serves."""

from __future__ import annotations

import gc
import weakref

import pytest
from fastapi.testclient import TestClient

from voxserve.heap import frozen_heap, release_frozen
from voxserve.server.app import create_app
from voxserve.server.settings import ServerSettings


def test_frozen_heap_freezes_for_the_block_and_thaws_after_it():
    gc.unfreeze()
    alive = [object()]  # a list: tracked by the collector (gc.is_tracked)
    assert gc.is_tracked(alive)
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        assert not any(o is alive for o in gc.get_objects())  # not in any generation the collector walks
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError, match="boom"), frozen_heap():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("freeze", [False, True])
def test_the_server_freezes_its_heap_only_when_asked(tmp_path, freeze):
    """``voxserve serve`` asks (create_app(freeze_heap=True)); the application factory's default does not, so
    embedding processes and the test suite keep every object collectable."""
    gc.unfreeze()
    settings = ServerSettings(preload=False, jobs_db=tmp_path / "jobs.db", jobs_dir=tmp_path / "jobs")
    with TestClient(create_app(settings, freeze_heap=freeze)) as client:
        assert client.get("/health").status_code == 200
        assert (gc.get_freeze_count() > 0) is freeze
    assert gc.get_freeze_count() == 0


class _Node:
    pass


def test_release_frozen_frees_frozen_cycles_dropped_since():
    gc.unfreeze()
    with frozen_heap():
        node = _Node()
        node.self = node  # a cycle: only the collector frees it
        gone = weakref.ref(node)
        gc.freeze()  # frozen as start-up's objects are
        del node
        gc.collect()
        assert gone() is not None  # frozen: a collection does not see it
        release_frozen()
        assert gone() is None
        assert gc.get_freeze_count() > 0  # what is still alive is frozen again
    release_frozen()  # not frozen: nothing to do
    assert gc.get_freeze_count() == 0
