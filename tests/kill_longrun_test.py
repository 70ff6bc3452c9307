"""longrun survives SIGKILL at random points, ten times in a row, and ends
bit-identical to an uninterrupted run (tests/processes.py)."""

import pytest

from tests import processes

pytestmark = pytest.mark.slow


def test_ten_sigkills_then_equal_to_an_uninterrupted_run(tmp_path):
    workdir, kills = processes.kill_cycles(tmp_path, "longrun", cycles=10, seed=7)
    print("(cycle, checkpoint after the kill, seconds, in a write):", kills)
    assert len(kills) == 11
    straight = str(tmp_path / "straight")
    code, output = processes.run(
        "train.py",
        processes.train_flags("longrun", straight, 40),
        tmp_path / "straight.log",
    )
    assert code == 0, output[-3000:]
    (step, killed), (step_b, whole) = [processes.newest(d) for d in (workdir, straight)]
    assert step == step_b == 40
    assert processes.assert_same_checkpoints(killed, whole) > 20
