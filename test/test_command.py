"""run_command: how every dbmr-* command reports an error the user can fix."""
import pytest

from dbmr_ros.checkpoint import CheckpointError
from dbmr_ros.command import run_command


def test_user_errors_are_one_line_and_status_2_bugs_keep_their_traceback(capsys):
    assert run_command('dbmr-x', lambda: None) == 0
    assert run_command('dbmr-x', lambda: 3) == 3
    for error in (FileExistsError('runs/a already holds a run'), CheckpointError('bad header'),
                  ValueError('--every must be at least 1')):
        def fail(error=error):
            raise error
        assert run_command('dbmr-x', fail) == 2
        assert capsys.readouterr().err == f'dbmr-x: error: {error}\n'

    class BagProblem(RuntimeError):
        pass

    def bag_problem():
        raise BagProblem('no image topic')
    assert run_command('dbmr-bag', bag_problem, more_errors=(BagProblem,)) == 2
    with pytest.raises(ZeroDivisionError):  # a bug is not hidden behind a one-line message
        run_command('dbmr-x', lambda: 1 / 0)
