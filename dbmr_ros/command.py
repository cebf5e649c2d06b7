"""How every dbmr-* command ends: an error the user can fix (a missing or existing file, a bad
dataset, checkpoint, calibration or value) is one line `prog: error: ...` on stderr and exit
status 2, as argparse reports a bad argument; anything else is a bug and keeps its traceback."""
import sys
from typing import Callable, Optional, Sequence, Type

from dbmr_ros.calibration import CalibrationError
from dbmr_ros.checkpoint import CheckpointError
from dbmr_ros.data.datasets import DatasetError

USER_ERRORS = (CalibrationError, CheckpointError, DatasetError, OSError, ValueError)


def run_command(prog: str, run: Callable[[], Optional[int]],
                more_errors: Sequence[Type[Exception]] = ()) -> int:
    """run() -> its exit status (None: 0); a user error -> 2 after its one-line message."""
    try:
        status = run()
    except USER_ERRORS + tuple(more_errors) as error:
        print(f'{prog}: error: {error}', file=sys.stderr)
        return 2
    return int(status or 0)
