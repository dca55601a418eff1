"""Progress off a terminal: plain, timed lines on standard error instead of a bar that shows only at the end."""

from __future__ import annotations

import io

from flawscope import _progress
from flawscope._progress import _LogBar, progress_bar


def test_log_lines_off_a_terminal_say_count_share_and_time_left(monkeypatch):
    clock = iter([0.0, 10.0, 31.0, 40.0, 70.0])
    monkeypatch.setattr(_progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    bar = _LogBar("distilling", 4, stream, interval=30.0)  # started at t=0
    bar.advance()  # t=10: too soon for a line
    bar.advance()  # t=31: a line
    bar.advance()  # t=40: 9 s after the last line
    bar.write(70.0)  # the closing line
    lines = stream.getvalue().splitlines()
    assert lines == [
        "distilling 2/4 (50 %), 0:31 elapsed, about 0:31 left",
        "distilling 3/4 (75 %), 1:10 elapsed, about 0:23 left",
    ]


def test_progress_bar_in_a_log_writes_the_final_count(capsys):
    with progress_bar("scoring", 3) as bar:
        for _ in range(3):
            bar.advance()
    assert capsys.readouterr().err.startswith("scoring 3/3 (100 %), 0:0")


def test_disabled_progress_writes_nothing(capsys):
    with progress_bar("scoring", 3, enabled=False) as bar:
        bar.advance(3)
    assert capsys.readouterr().err == ""
