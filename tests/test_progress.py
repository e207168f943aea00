"""The fleet's and the load test's progress: a tqdm bar on a terminal, whole lines elsewhere."""

import io

from simulator.progress import Progress, ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def phases():
    yield Progress("connecting", 10, 4, 0.0, 60.0, 0, 0, 0, 0)
    yield Progress("running", 10, 10, 30.0, 60.0, 1200, 8, 50, 450)
    yield Progress("settling", 10, 10, 61.0, 60.0, 2400, 0, 100, 900)


def test_off_a_terminal_each_update_is_a_line_of_its_own():
    out = io.StringIO()
    bar = ProgressBar(out, every_s=0)
    for p in phases():
        bar(p)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert "connecting: 4/10 terminals online" in lines
    assert "running   30/60 s: 10/10 online, 1,200 events (8 unacknowledged), 50 enrolled, 450 deliveries" in lines
    assert lines[-1].startswith("settling   60/60 s: 10/10 online, 2,400 events (0 unacknowledged)")


def test_on_a_terminal_it_is_one_bar_redrawn_in_place():
    out = Terminal()
    bar = ProgressBar(out, redraw_s=0)
    for p in phases():
        bar(p)
    bar.close()
    drawn = out.getvalue()
    assert "\r" in drawn and " 40% |" in drawn  # 4 of 10 terminals online
    assert "running   30/60 s" in drawn
