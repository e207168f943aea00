"""freeze_startup: what start-up built leaves later collections' sight; what comes after does not."""

import gc

from gateway.process.heap import freeze_startup


def test_what_start_up_built_is_frozen_and_what_comes_after_is_collected_as_before():
    built_at_start = [object() for _ in range(1000)]
    try:
        freeze_startup()
        frozen = gc.get_freeze_count()
        assert frozen >= len(built_at_start)
        made_later = [[] for _ in range(1000)]
        assert gc.get_freeze_count() == frozen  # later objects stay in the collector's sight
        assert gc.is_tracked(made_later[0])
    finally:
        gc.unfreeze()
