"""The preprocessing cache: `clean_point_cloud`'s results (the slow part of preprocessing) kept
outside the dataset, keyed by the source file, the options and the cleaning's code."""
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import scipy
import sklearn

from dbmr_ros.data import clustering, sample
from dbmr_ros.data.preprocess import clean_point_cloud, PreprocessConfig
from dbmr_ros.files import atomic_write


def default_cache_dir() -> Path:
    base = os.environ.get('DBMR_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'dbmr_ros')
    return Path(base) / 'preprocessed'


def _cleaning_code() -> str:
    """A digest of what decides `clean_point_cloud`'s result besides its input and options: the
    source of the modules it runs (`preprocess`, `clustering`, `sample`) and the libraries'
    versions (RANSAC and DBSCAN are numpy's, scipy's and scikit-learn's). A module added to the
    cleaning belongs here too."""
    digest = hashlib.sha1(' '.join((np.__version__, scipy.__version__,
                                    sklearn.__version__)).encode())
    # The cleaning's module by way of its function: `dbmr_ros.data.preprocess` names the function.
    cleaning = sys.modules[clean_point_cloud.__module__].__file__
    for module in (cleaning, clustering.__file__, sample.__file__):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()


CLEANING_CODE = _cleaning_code()


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:   # a read-only cache still serves its entries
        pass


def default_cache_limit() -> int:
    """Bytes the preprocessing cache may hold: $DBMR_CACHE_MAX_GB (default 4: about 2000
    cleaned 400 x 400 clouds, several categories of MVTec 3D-AD)."""
    return int(float(os.environ.get('DBMR_CACHE_MAX_GB', 4)) * 2 ** 30)


class PreprocessCache:
    """Caches `clean_point_cloud` results per source file and config, never touching the source.

    The key hashes the file's absolute path, size, modification time, the cleaning options and
    the cleaning's code (`CLEANING_CODE`), so an edited file, a changed option or an edited
    cleaning is recomputed, never served an old result. Writes are atomic (temp file + rename).
    Bounded: above `max_bytes` (default `default_cache_limit()`) the least recently used
    entries go (a hit renews an entry's time); only this cache's own entries, never another
    file in the directory.
    """

    def __init__(self, cfg: PreprocessConfig, directory: Optional[os.PathLike] = None,
                 max_bytes: Optional[int] = None):
        self.cfg = cfg
        self.directory = Path(directory) if directory else default_cache_dir()
        self.max_bytes = default_cache_limit() if max_bytes is None else max_bytes
        self._held = None   # bytes in the directory: scanned at the first write, then counted

    def _key(self, source: Path) -> str:
        stat = source.stat()
        options = {k: v for k, v in self.cfg.to_dict().items() if k != 'image_size'}
        text = json.dumps([str(source.resolve()), stat.st_size, stat.st_mtime_ns, options,
                           CLEANING_CODE], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()

    def cleaned(self, source: os.PathLike, xyz: np.ndarray) -> np.ndarray:
        source = Path(source)
        path = self.directory / (self._key(source) + '.npy')
        if path.exists():
            try:
                cached = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                cached = None  # a damaged (or just evicted) entry is recomputed below
            if cached is not None and cached.shape == xyz.shape:
                _touch(path)   # recently used: evicted last
                return cached
        result = clean_point_cloud(xyz, self.cfg)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.save(tmp, result))
        self._held = (self._entries_bytes() if self._held is None else
                      self._held + path.stat().st_size)
        if self._held > self.max_bytes:
            self._held = self._evict()
        return result

    def _entries(self) -> list:
        """(modification time, bytes, path) of this cache's entries: `<40 hex digits>.npy`."""
        found = []
        for entry in os.scandir(self.directory):
            stem, ext = os.path.splitext(entry.name)
            if ext == '.npy' and len(stem) == 40 and all(c in '0123456789abcdef' for c in stem):
                try:
                    stat = entry.stat()
                except FileNotFoundError:   # evicted by another process meanwhile
                    continue
                found.append((stat.st_mtime_ns, stat.st_size, entry.path))
        return found

    def _entries_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict(self) -> int:
        """Removes the least recently used entries until at most `max_bytes` remain (the
        newest alone may exceed it); returns the bytes left."""
        entries = sorted(self._entries())
        held = sum(size for _, size, _ in entries)
        for _, size, path in entries[:-1]:
            if held <= self.max_bytes:
                break
            try:
                os.remove(path)
            except FileNotFoundError:   # another process evicted it first
                pass
            held -= size
        return held
