"""longrun survives SIGKILL at random points, `KILL_CYCLES` times in a row
(4 in CI; issue 15 measured ten), and ends bit-identical to an uninterrupted
run (`tests/processes.kill_test`; one file per regime, so the two run side
by side under `make test`)."""

import pytest

from tests import processes

pytestmark = pytest.mark.slow


def test_sigkills_in_a_row_then_equal_to_an_uninterrupted_run(tmp_path):
    processes.kill_test(tmp_path, "longrun", seed=7)
