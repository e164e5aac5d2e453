"""The hardening replay (tests/replay_hardening.py) at reduced fuzz counts: every failure case of
issue #12 and 20 byte flips + 15 CRC-consistent member edits of a checkpoint and of a .tpq give
0 tracebacks, 0 silent successes on bad data, 0 lost files and only one-line errors.
`python tests/replay_hardening.py` runs the full counts (200 flips, 150 edits)."""
import pytest
from replay_hardening import main as replay


@pytest.mark.slow
def test_replay_counts_no_traceback_no_silent_success_no_lost_file(capsys):
    code = replay(["--flips", "20", "--edits", "15"])
    out = capsys.readouterr().out
    assert code == 0, f"the replay found problems:\n{out}"
    assert "0 traceback, 0 silent, 0 lost, 0 unclear" in out, out
