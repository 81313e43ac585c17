"""Content hashes of the files a cache was made from, kept with the size and mtime they were read at, so
a file is read again only when it changed."""

from __future__ import annotations

import itertools
import json
import os
from typing import Callable, Iterable

from msf.pipeline.audio_io import content_hash
from msf.pipeline.cache.index.schema import IndexConnection


class FileHashes(IndexConnection):
    # -- file hashes -----------------------------------------------------------------------
    def file_hashes(self, paths: Iterable[str], progress: Callable[[int], None] | None = None) -> dict[str, str]:
        """Content hashes, re-reading a file only when its size or mtime changed since last time;
        "missing" for a file that is not there. New files are read by a few threads (reads and
        blake2b release the GIL): a first run over a large corpus is I/O, not Python."""
        paths = list(dict.fromkeys(paths))
        known = self._known_hashes(paths)
        out: dict[str, str] = {}
        todo: list[tuple[str, int, int]] = []
        stat = os.stat
        for p in paths:
            if p in out:
                continue
            try:
                st = stat(p)
            except OSError:
                out[p] = "missing"
                continue
            k = known.get(p)
            if k is not None and k[0] == st.st_size and k[1] == st.st_mtime_ns:
                out[p] = k[2]
                continue
            out[p] = ""
            todo.append((p, st.st_size, st.st_mtime_ns))
        if todo and self.readonly:  # hashed, not recorded
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
                out.update(zip([t[0] for t in todo], pool.map(lambda t: content_hash(t[0]), todo)))
        elif todo:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
                for start in range(0, len(todo), 1024):  # committed in blocks: an interrupted first run keeps them
                    block = todo[start : start + 1024]
                    hashed = list(pool.map(lambda t: content_hash(t[0]), block))
                    with self.transaction():
                        self.db.executemany("INSERT OR REPLACE INTO file_hashes VALUES (?,?,?,?)",
                                            [(p, size, mtime, h) for (p, size, mtime), h in zip(block, hashed)])
                    out.update((p, h) for (p, _, _), h in zip(block, hashed))
                    if progress:
                        progress(len(block))
        return out

    def _known_hashes(self, paths: list[str]) -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, hash) of those of `paths` hashed before: looked up in blocks, never
        the whole table (a million rows would be the driver's largest object)."""
        known: dict[str, tuple[int, int, str]] = {}
        for start in range(0, len(paths), 500):
            block = paths[start : start + 500]
            rows = self.db.execute(f"SELECT * FROM file_hashes WHERE path IN ({','.join('?' * len(block))})", block)
            known.update((p, (size, mtime, h)) for p, size, mtime, h in rows)
        return known

    def recorded_files_unchanged(self) -> bool:
        """Whether every file the recorded utterances name (audio, provided alignments) still has the
        size and mtime it had when hashed: one stat each, no read."""
        from msf.pipeline.corpus import FILE_EXTRAS

        extras = {p for (e,) in self.db.execute("SELECT DISTINCT extra FROM utterances") if e != "{}"
                  for k, p in json.loads(e).items() if k in FILE_EXTRAS}
        known = self._known_hashes(sorted(extras))
        rows = itertools.chain(  # a cursor: a million rows are stat-ed as they come, never held
            self.db.execute("SELECT u.audio, f.size, f.mtime_ns FROM utterances u "
                            "LEFT JOIN file_hashes f ON f.path = u.audio"),
            ((p, *known[p][:2]) if p in known else (p, None, None) for p in extras))
        stat = os.stat
        for path, size, mtime in rows:
            try:
                st = stat(path)
            except OSError:
                return False
            if st.st_size != size or st.st_mtime_ns != mtime:
                return False
        return True

    def file_sizes(self, paths: Iterable[str]) -> dict[str, int]:
        """Bytes of those of `paths` hashed before."""
        return {p: k[0] for p, k in self._known_hashes(list(dict.fromkeys(paths))).items()}


