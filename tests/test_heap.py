"""freeze_startup: what start-up built leaves later collections' sight; what comes after does not."""

import gc

from gateway.process.heap import freeze_startup


def test_what_start_up_built_is_frozen_and_what_comes_after_is_collected_as_before():
    built_at_start = [[] for _ in range(3)]  # lists: objects the collector tracks
    try:
        freeze_startup()
        made_later = [[] for _ in range(3)]
        in_sight = {id(o) for o in gc.get_objects()}  # a frozen object is in no generation's sight
        assert not any(id(o) in in_sight for o in built_at_start)
        assert all(id(o) in in_sight for o in made_later)
    finally:
        gc.unfreeze()
