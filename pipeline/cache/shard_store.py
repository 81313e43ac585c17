"""The shard store: per stage, immutable HDF5 shards written whole by one task, plus the SQLite index.

A shard is written to `<stage>/.tmp-*.h5`, flushed, fsynced and renamed to `<stage>/shard-*.h5`, so a
crash never leaves a half-written shard under a shard name. Layout of one shard:

    /utt                  (N,) utf-8 utterance ids
    /<field>              (N,) numbers or strings, for scalar fields
    /<field>/data         rows concatenated along axis 0, for array fields (ragged T x D frames)
    /<field>/offsets      (N+1,) int64 row boundaries into data
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from msf.pipeline.cache.index import CacheIndex, Entry
from msf.pipeline.errors import CacheDamaged
from msf.pipeline.quantized import decode_record, decoded
from msf.pipeline.faults import fault_point
from msf.pipeline.stage import Record

FORMAT = "msf-shard-1"
STR = h5py.string_dtype("utf-8")
COMPRESS_MIN_BYTES = 64 << 10  # below this, filter overhead costs more than it saves
CHUNK_BYTES = 256 << 10


class ShardFormatError(ValueError):
    """A stage returned a record the store cannot hold (a stage bug, reported with its field)."""


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return "strings" if value.dtype.kind in "USO" else "array"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "strings"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return "float"
    raise ShardFormatError(f"unsupported value type {type(value).__name__}")


def normalise(record: Record) -> Record:
    """The exact form a record has after a round trip through a shard."""
    out: Record = {}
    for name, v in record.items():
        kind = _kind(v)
        if kind == "array":
            out[name] = np.ascontiguousarray(v)
        elif kind == "strings":
            out[name] = np.asarray([str(s) for s in v], dtype=str).reshape(-1)
        elif kind == "string":
            out[name] = str(v)
        elif kind == "bool":
            out[name] = bool(v)
        elif kind == "int":
            out[name] = int(v)
        else:
            out[name] = float(v)
    return out


def record_checksum(record: Record) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(record):
        v = record[name]
        h.update(name.encode() + b"\x00")
        if isinstance(v, np.ndarray) and v.dtype.kind == "U":
            h.update(b"S" + "\x00".join(v.tolist()).encode() + b"\x01" + str(len(v)).encode())
        elif isinstance(v, np.ndarray):
            h.update(f"A{v.dtype.str}{v.shape}".encode())
            h.update(np.ascontiguousarray(v).data)  # the buffer itself: no copy, and hashing releases the GIL
        elif isinstance(v, str):
            h.update(b"s" + v.encode())
        else:
            h.update(f"{type(v).__name__}:{v!r}".encode())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _array_dataset(group: h5py.Group, name: str, data: np.ndarray) -> None:
    # Floating-point arrays (encoder frames, embeddings) and one-byte frames (records of values and
    # scale) stay contiguous and unfiltered: lzf+shuffle saved nothing on them (a demo acoustic shard:
    # 21.46 MB of float16 frames, 21.48 MB on disk), and a contiguous dataset can be read by byte
    # offset, which the streaming trainer does without h5py.
    kwargs: dict[str, Any] = {}
    if data.dtype.kind not in "fV" and data.nbytes >= COMPRESS_MIN_BYTES and data.ndim >= 1 and data.shape[0] > 0:
        row_bytes = max(1, data.nbytes // data.shape[0])
        rows = int(max(1, min(data.shape[0], CHUNK_BYTES // row_bytes)))
        kwargs = {"chunks": (rows,) + data.shape[1:], "compression": "lzf", "shuffle": True}
    group.create_dataset(name, data=data, **kwargs)


def _field_kind(name: str, records: list[Record]) -> str:
    """One kind per field across rows; mutates empty float arrays into empty string lists when needed."""
    kinds = {_kind(r[name]) for r in records}
    if kinds == {"array", "strings"} and all(len(r[name]) == 0 for r in records if r[name].dtype.kind not in "USO"):
        # np.asarray([]) is float64: an empty word list is still a list of words
        for r in records:
            if r[name].dtype.kind not in "USO":
                r[name] = r[name].astype(str)
        kinds = {"strings"}
    if len(kinds) != 1:
        raise ShardFormatError(f"field {name!r} mixes kinds {sorted(kinds)} across rows")
    return kinds.pop()


@dataclass(frozen=True)
class WrittenShard:
    name: str
    checksums: list[str]
    bytes: list[int]  # each row's share of the file on disk


def record_nbytes(record: Record) -> int:
    return sum(v.nbytes if isinstance(v, np.ndarray) else 8 for v in record.values()) + 16


def write_shard(stage_dir: Path, utt_ids: list[str], records: list[Record]) -> WrittenShard:
    """Write records as one new shard: its file name, each row's checksum and size on disk."""
    if not records:
        raise ValueError("write_shard needs at least one record")
    records = [normalise(r) for r in records]
    names = sorted(records[0])
    for uid, r in zip(utt_ids, records):
        if sorted(r) != names:
            raise ShardFormatError(f"record for {uid} has fields {sorted(r)}, expected {names}")
    kinds = {name: _field_kind(name, records) for name in names}
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = f"shard-{uuid.uuid4().hex}.h5"
    tmp = stage_dir / f".tmp-{final}"
    # Checksums are computed while the file is written and synced (hashing a large array releases
    # the GIL): on a GPU the shard write, not the forward, is what the extraction waits on.
    hashing = ThreadPoolExecutor(1, thread_name_prefix="msf-checksum")
    checksums = hashing.submit(lambda: [record_checksum(r) for r in records])
    hashing.shutdown(wait=False)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs["format"] = FORMAT
            f.create_dataset("utt", data=np.asarray(utt_ids, dtype=object), dtype=STR)
            for name in names:
                values = [r[name] for r in records]
                kind = kinds[name]
                if kind in ("array", "strings"):
                    trailing = {v.shape[1:] for v in values}
                    dtypes = {v.dtype.str for v in values if kind == "array"}
                    if len(trailing) != 1 or len(dtypes) > 1:
                        raise ShardFormatError(f"field {name!r}: rows differ in trailing shape or dtype")
                    g = f.create_group(name)
                    g.attrs["kind"] = kind
                    offsets = np.zeros(len(values) + 1, dtype=np.int64)
                    offsets[1:] = np.cumsum([len(v) for v in values])
                    data = np.concatenate(values, axis=0)
                    if kind == "strings":
                        g.create_dataset("data", data=data.astype(object), dtype=STR)
                    else:
                        _array_dataset(g, "data", data)
                    g.create_dataset("offsets", data=offsets)
                elif kind == "string":
                    ds = f.create_dataset(name, data=np.asarray(values, dtype=object), dtype=STR)
                    ds.attrs["kind"] = kind
                else:
                    dtype = {"bool": np.bool_, "int": np.int64, "float": np.float64}[kind]
                    ds = f.create_dataset(name, data=np.asarray(values, dtype=dtype))
                    ds.attrs["kind"] = kind
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, stage_dir / final)
        _fsync_dir(stage_dir)
    finally:
        tmp.unlink(missing_ok=True)
    nbytes = [record_nbytes(r) for r in records]
    total = sum(nbytes)
    return WrittenShard(final, checksums.result(), [round(size * n / total) for n in nbytes])


@dataclass(frozen=True)
class ContiguousArray:
    """A contiguous, unfiltered HDF5 dataset read by byte offset straight from the file: each slice
    opens, reads and closes (a few microseconds, the GIL released during the read), so the reader can
    remember every shard's layout without holding a file descriptor or h5py's lock per shard."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    def __getitem__(self, s: slice) -> np.ndarray:
        lo, hi, _ = s.indices(self.shape[0])
        row = int(np.prod(self.shape[1:], dtype=np.int64))
        flat = np.fromfile(self.path, self.dtype, count=max(0, hi - lo) * row,
                           offset=self.offset + lo * row * self.dtype.itemsize)
        return flat.reshape(-1, *self.shape[1:])

    def take(self, lo: int, hi: int, select: list[int]) -> np.ndarray:
        """Rows [lo, hi) with only the entries `select` of the second axis, through a memory map: the
        pages of unselected layers are not read (one layer of 1,024 float16 is 2 KB, half a page)."""
        mm = np.memmap(self.path, self.dtype, "r", offset=self.offset, shape=self.shape)
        return np.array(mm[lo:hi][:, select])


class ShardReader:
    """Reads rows from immutable shards, keeping recently used files open."""

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self._open: dict[Path, h5py.File] = {}
        # (path, field) -> (offsets, data). ContiguousArray entries outlive their file's handle (a few KB
        # each), so random access over more shards than max_open does not reopen files every batch.
        self._columns: dict[tuple[Path, str], tuple[np.ndarray, Any]] = {}

    def file(self, path: Path) -> h5py.File:
        f = self._open.pop(path, None)
        if f is None:
            try:
                f = h5py.File(path, "r", locking=False)
            except OSError as e:  # truncated or overwritten outside msf (a missing file is not fresh, never here)
                raise CacheDamaged(f"shard {path} cannot be read ({e}); `msf cache verify --cache "
                                   f"{path.parent.parent}` drops its entries, and the next `msf extract` "
                                   "computes them again") from None
            if len(self._open) >= self.max_open:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
                self._columns = {k: v for k, v in self._columns.items()
                                 if k[0] != oldest or isinstance(v[1], ContiguousArray)}
        self._open[path] = f  # most recently used last
        return f

    def _column(self, path: Path, name: str) -> tuple[np.ndarray, Any]:
        """An array field's offsets (read once) and its data: a ContiguousArray when the dataset is
        stored contiguous and unfiltered (a plain file read that does not hold h5py's lock), otherwise
        the h5py dataset."""
        key = (path, name)
        if key not in self._columns:
            g = self.file(path)[name]
            data = g["data"]
            offset = data.id.get_offset()
            if data.chunks is None and offset is not None and data.size:
                data = ContiguousArray(path, offset, data.dtype, data.shape)
            self._columns[key] = (g["offsets"][...], data)
        return self._columns[key]

    def array_lengths(self, path: Path, name: str, rows: list[int]) -> np.ndarray:
        """The first dimension of an array field in several rows, from its offsets alone (no data read)."""
        offsets = self._column(path, name)[0]
        r = np.asarray(rows, dtype=np.int64)
        return offsets[r + 1] - offsets[r]

    def array_rows(self, path: Path, name: str, rows: list[int], select: list[int] | None = None,
                   spans: list[tuple[int, int | None]] | None = None, raw: bool = False) -> list[np.ndarray]:
        """One array field of several rows, for streaming training batches: rows close together in the
        shard are read as one span (one call and each compressed chunk decompressed once), rows far
        apart one by one; nothing else of the record is read. `select`: entries of the second axis
        to keep (layers), read alone from a contiguous shard; `spans`: per row, the (start, stop) of its
        first axis to read (stop None: to its end), and only that part is read. One-byte frames (their
        scales stored in the same records) come back as float32 (`msf.pipeline.quantized`), or as
        stored with `raw`."""
        got = self._stored_rows(path, name, rows, select, spans)
        return got if raw else [decoded(a) for a in got]

    def _stored_rows(self, path: Path, name: str, rows: list[int], select: list[int] | None,
                     spans: list[tuple[int, int | None]] | None) -> list[np.ndarray]:
        offsets, data = self._column(path, name)
        if select is not None or spans is not None:
            return [self._part(data, int(offsets[r]), int(offsets[r + 1]), select, spans[i] if spans else None)
                    for i, r in enumerate(rows)]
        out: dict[int, np.ndarray] = {}
        order = sorted(set(rows))
        start = 0
        while start < len(order):
            end = start + 1  # extend the span while the gap it would swallow is no larger than a row
            while end < len(order) and offsets[order[end]] - offsets[order[end - 1] + 1] <= \
                    offsets[order[end] + 1] - offsets[order[end]]:
                end += 1
            lo, hi = offsets[order[start]], offsets[order[end - 1] + 1]
            span = np.asarray(data[lo:hi])
            for r in order[start:end]:
                out[r] = span[offsets[r] - lo : offsets[r + 1] - lo]
            start = end
        return [out[r] for r in rows]

    @staticmethod
    def _part(data: Any, lo: int, hi: int, select: list[int] | None, span: tuple[int, int | None] | None
              ) -> np.ndarray:
        if span is not None:
            lo, hi = min(hi, lo + span[0]), hi if span[1] is None else min(hi, lo + span[1])
        if select is None:
            return np.asarray(data[lo:hi])
        if isinstance(data, ContiguousArray):
            return data.take(lo, hi, select)
        return np.asarray(data[lo:hi])[:, select]  # a chunked dataset: read, then select

    def row(self, path: Path, row: int, raw: bool = False) -> Record:
        """One row as readers see it (one-byte frames as float32), or as stored with `raw`."""
        f = self.file(path)
        out: Record = {}
        for name, obj in f.items():
            if name == "utt":
                continue
            kind = obj.attrs["kind"]
            if kind in ("array", "strings"):
                lo, hi = obj["offsets"][row : row + 2]
                data = obj["data"]
                out[name] = (np.asarray(data.asstr()[lo:hi], dtype=str) if kind == "strings" else data[lo:hi])
            elif kind == "string":
                out[name] = obj.asstr()[row]
            else:
                out[name] = {"bool": bool, "int": int, "float": float}[kind](obj[row])
        return out if raw else decode_record(out)

    def rows(self, path: Path, rows: list[int]) -> list[Record]:
        """Several rows of one shard, each dataset read once (much cheaper than row by row when a
        task needs most of a shard, as the next stage's task usually does)."""
        if len(rows) < 4:
            return [self.row(path, r) for r in rows]
        f = self.file(path)
        columns: dict[str, tuple[str, Any, Any]] = {}
        for name, obj in f.items():
            if name == "utt":
                continue
            kind = obj.attrs["kind"]
            if kind == "array":
                columns[name] = (kind, obj["data"][...], obj["offsets"][...])
            elif kind == "strings":
                columns[name] = (kind, np.asarray(obj["data"].asstr()[...], dtype=str), obj["offsets"][...])
            elif kind == "string":
                columns[name] = (kind, obj.asstr()[...], None)
            else:
                columns[name] = (kind, obj[...], None)
        cast = {"bool": bool, "int": int, "float": float, "string": str}
        out: list[Record] = []
        for r in rows:
            rec: Record = {}
            for name, (kind, data, offsets) in columns.items():
                rec[name] = data[offsets[r] : offsets[r + 1]] if offsets is not None else cast[kind](data[r])
            out.append(decode_record(rec))
        return out

    def close(self) -> None:
        self._columns.clear()
        for f in self._open.values():
            f.close()
        self._open.clear()


@dataclass
class VerifyReport:
    checked: int = 0
    bad: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # stage -> shard -> utts
    errors: dict[str, str] = field(default_factory=dict)  # "stage/shard" -> why
    unreferenced: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "ok": self.ok, "bad": self.bad, "errors": self.errors,
                "unreferenced": self.unreferenced}



def shard_path(root: Path, stage: str, shard: str) -> Path:
    """Where a stage's shard lives in a cache (the workers, which have no ShardStore, ask here too)."""
    return Path(root) / stage / shard


class ShardStore:
    """The cache directory: `<root>/index.sqlite` and `<root>/<stage>/shard-*.h5`."""

    def __init__(self, root: Path, readonly: bool = False):
        self.root = Path(root)
        self.index = CacheIndex(self.root, readonly=readonly)
        self.reader = ShardReader()

    def close(self) -> None:
        self.reader.close()
        self.index.close()

    def shard_path(self, stage: str, shard: str) -> Path:
        return shard_path(self.root, stage, shard)

    def read(self, entry: Entry, raw: bool = False) -> Record:
        """An entry's record as readers see it, or as stored (`raw`: what checksums and compaction see)."""
        return self.reader.row(self.shard_path(entry.stage, entry.shard), entry.row, raw)

    def shard_files(self, stage: str) -> list[Path]:
        d = self.root / stage
        return sorted(d.glob("shard-*.h5")) + sorted(d.glob(".tmp-*")) if d.is_dir() else []

    def shard_names(self, stage: str) -> set[str]:
        d = self.root / stage
        return {n for n in os.listdir(d) if n.startswith("shard-")} if d.is_dir() else set()

    def stage_dirs(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    # -- maintenance -----------------------------------------------------------------------
    def verify(self, drop_bad: bool = True) -> VerifyReport:
        """Re-read every entry and compare checksums; bad entries leave the index so extract redoes them."""
        report = VerifyReport()
        self.reader.close()
        for stage in self.index.stages():
            by_shard: dict[str, list[Entry]] = defaultdict(list)
            for e in self.index.entries(stage).values():
                by_shard[e.shard].append(e)
            for shard, entries in sorted(by_shard.items()):
                path = self.shard_path(stage, shard)
                report.checked += len(entries)
                try:
                    ids = self.reader.file(path)["utt"].asstr()[...]
                except Exception as err:  # noqa: BLE001 - unreadable shard: all its rows are bad
                    report.errors[f"{stage}/{shard}"] = f"{type(err).__name__}: {err}"
                    bad = entries
                else:
                    bad = [e for e in entries if not self._row_ok(path, ids, e)]
                if bad:
                    report.bad.setdefault(stage, {})[shard] = sorted({e.utt for e in bad})
                    if drop_bad:
                        self.index.drop(stage, [(e.utt, e.fingerprint) for e in bad])
            self.reader.close()
        for stage in self.stage_dirs():
            referenced = self.index.referenced_shards(stage)
            report.unreferenced += [f"{stage}/{p.name}" for p in self.shard_files(stage) if p.name not in referenced]
        return report

    def _row_ok(self, path: Path, ids: np.ndarray, e: Entry) -> bool:
        try:
            return ids[e.row] == e.utt and record_checksum(self.reader.row(path, e.row, raw=True)) == e.checksum
        except Exception:  # noqa: BLE001 - any read failure (bad lzf block, short read) is corruption
            return False

    def compact(self, shard_size: int = 512) -> dict[str, int]:
        """Rewrite each stage's entries (every variant) into full shards and drop the old files;
        returns shards per stage. Refuses, before writing anything, when a shard the index points at is
        missing: compaction would stop half-way on it."""
        self.reader.close()
        missing = [f"{stage}/{name}" for stage in self.index.stages()
                   for name in sorted(self.index.referenced_shards(stage) - self.shard_names(stage))]
        if missing:
            raise CacheDamaged(f"cannot compact {self.root}: {len(missing)} shard file(s) the index points at are "
                               f"missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                               "`msf cache verify` lists the entries they held")
        result: dict[str, int] = {}
        for stage in self.index.stages():
            entries = sorted(self.index.entries(stage).values(), key=lambda e: (e.shard, e.row))
            written = 0
            # Variants of a stage may store different layouts (float16 and int8 frames, other layers):
            # a shard holds one layout, so rows are gathered per layout.
            pending: dict[tuple, list[tuple[Entry, Record]]] = defaultdict(list)

            def flush(layout: tuple) -> None:
                nonlocal written
                group = pending.pop(layout)
                w = write_shard(self.root / stage, [e.utt for e, _ in group], [r for _, r in group])
                self.index.commit([replace(e, shard=w.name, row=i, checksum=c, bytes=b)
                                   for i, ((e, _), c, b) in enumerate(zip(group, w.checksums, w.bytes))], [])
                fault_point("compact")
                written += 1

            for e in entries:
                record = self.read(e, raw=True)
                layout = tuple(sorted((k, v.dtype.str, v.shape[1:]) if _kind(v) == "array" else (k, _kind(v))
                                      for k, v in record.items()))
                pending[layout].append((e, record))
                if len(pending[layout]) == shard_size:
                    flush(layout)
            for layout in list(pending):
                flush(layout)
            self.reader.close()
            result[stage] = written
        self.sweep()  # the old shards, and any a compaction killed earlier left unreferenced
        return result

    def sweep(self, dry_run: bool = False) -> dict[str, int]:
        """Delete shard files no index entry points at (superseded or forgotten rows, leftovers of a
        crash); returns {"files", "bytes"} removed (or that would be, with dry_run)."""
        self.reader.close()
        files = nbytes = 0
        for stage in self.stage_dirs():
            referenced = self.index.referenced_shards(stage)
            for p in self.shard_files(stage):
                if p.name not in referenced:
                    files += 1
                    nbytes += p.stat().st_size
                    if not dry_run:
                        p.unlink(missing_ok=True)
        return {"files": files, "bytes": nbytes}
