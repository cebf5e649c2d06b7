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


def refuse_existing_output(path, replace: bool = False, flag: str = '--overwrite',
                           holds: str = 'files') -> Path:
    """The one rule for outputs: a file, or a folder that is not empty, is never replaced unless
    the user asked for it (`replace`, given by `flag`; flag '' when nothing may replace it).
    Raises FileExistsError saying how to proceed; returns `path` as a Path."""
    path = Path(path)
    taken = path.exists() and not (path.is_dir() and not any(path.iterdir()))
    if taken and not replace:
        how = f'pass {flag} to replace it' if flag else 'choose another path'
        raise FileExistsError(f'{path} already holds {holds}; {how}')
    return path


def prepare_output(path, overwrite: bool) -> Path:
    """An output folder for results, made after `refuse_existing_output`'s check."""
    output = refuse_existing_output(path, overwrite, holds='results')
    output.mkdir(parents=True, exist_ok=True)
    return output
