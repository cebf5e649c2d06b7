"""Writing files so that nothing the user has is half-written: one way, used everywhere."""
import os
from pathlib import Path
from typing import Callable


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """write(tmp) into a temporary file beside `path`, then rename it over `path`: readers see
    the old file or the new one, never a partial one, and a crash leaves the old one. The
    temporary name keeps the suffix (np.save would add '.npy' otherwise)."""
    path = Path(path)
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
