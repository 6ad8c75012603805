"""A simulated disk for crash tests, in the manner of SQLite's crash VFS and LevelDB's
fault-injection Env.

:class:`SimDisk` implements :class:`trackd.eventlog.fs.FileSystem` over an in-memory model
that keeps, per file, the durable content (what survives any crash) and the writes and
truncations since the last ``datasync``; and, per directory, the durable entries and the
entry operations (create, mkdir, rename, remove) since the last ``fsync_dir`` that touched it.

A hook is called before and after every durability call (``datasync``, ``fsync_dir``); a
test takes :meth:`SimDisk.snapshot` there. :meth:`DiskState.crash_states` enumerates the disk
images a crash at that moment can leave: each unsynced write kept, dropped, zero-filled (the
size grew but the data never landed), torn to a prefix, or torn page by page (some 4 KiB
pages kept, others lost); each unsynced directory operation applied or not. When there are
more combinations than asked for, a fixed-seed sample is taken (always with the all-kept and
all-lost images). :meth:`CrashImage.materialise` writes an image into a real folder, where
the real code (``EventLog.open``, ``open_views``) recovers it.

Imported by the tests next to it; the module name is unique across the test folders.
"""

from __future__ import annotations

import copy
import errno
import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trackd.eventlog.fs import FileSystem

PAGE = 4096
SECTOR = 512
_MAX_FILE_VARIANTS = 96


@dataclass(eq=False)
class _File:
    durable: bytearray = field(default_factory=bytearray)
    current: bytearray = field(default_factory=bytearray)
    # ("w", offset, data) and ("t", size) since the last datasync, in order
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)
    locked_by: int | None = None


@dataclass(eq=False)
class _Dir:
    durable: dict[str, _File | _Dir] = field(default_factory=dict)
    current: dict[str, _File | _Dir] = field(default_factory=dict)


@dataclass(eq=False)
class _DirOp:
    """One entry operation not yet durable: link ``node`` as ``name`` in ``dir`` (None
    unlinks), and for a rename also unlink ``src_name`` in ``src_dir``."""

    dir: _Dir
    name: str
    node: _File | _Dir | None
    src_dir: _Dir | None = None
    src_name: str = ""
    what: str = ""

    def touches(self, d: _Dir) -> bool:
        return self.dir is d or self.src_dir is d

    def apply(self, entries: Callable[[_Dir], dict[str, _File | _Dir]]) -> None:
        if self.src_dir is not None:
            entries(self.src_dir).pop(self.src_name, None)
        if self.node is None:
            entries(self.dir).pop(self.name, None)
        else:
            entries(self.dir)[self.name] = self.node


@dataclass(frozen=True)
class SyncPoint:
    """A durability call, as the hook sees it.

    Attributes:
        kind: ``"datasync"`` or ``"fsync_dir"``.
        path: The file or directory.
        phase: ``"before"`` (nothing of it happened yet) or ``"after"`` (it returned).
        n: Running number of durability calls, from 1.
    """

    kind: str
    path: str
    phase: str
    n: int

    @property
    def label(self) -> str:
        """A short description for test output."""
        return f"{self.phase} {self.kind} #{self.n} of {os.path.basename(self.path)}"


@dataclass(frozen=True)
class CrashImage:
    """One disk image after a crash.

    Attributes:
        label: How it came about (which unsynced operations were kept, dropped or torn).
        dirs: Every directory path, parents first.
        files: File path to content.
    """

    label: str
    dirs: tuple[str, ...]
    files: dict[str, bytes]

    def materialise(self, root: Path, strip: str) -> None:
        """Write the image into ``root``: simulated path ``strip + x`` becomes ``root / x``."""
        for d in self.dirs:
            if d.startswith(strip):
                (root / d[len(strip) :].lstrip("/")).mkdir(parents=True, exist_ok=True)
        for p, data in self.files.items():
            if p.startswith(strip):
                dst = root / p[len(strip) :].lstrip("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(data)


# A variant of one pending file operation: ("keep",), ("drop",), ("zeros",), ("prefix", n),
# ("pages", mask, sized).
_Variant = tuple[object, ...]


class DiskState:
    """A frozen copy of the disk model at one moment; enumerates its crash images."""

    def __init__(self, root: _Dir, dir_ops: list[_DirOp]) -> None:
        self._root, self._ops = copy.deepcopy((root, dir_ops))

    def pending_summary(self) -> str:
        """How many unsynced file and directory operations there are."""
        files = sum(len(f.pending) for f in self._files())
        return f"{files} unsynced file op(s), {len(self._ops)} unsynced dir op(s)"

    def _files(self) -> Iterator[_File]:
        seen: set[int] = set()
        stack: list[_File | _Dir] = [self._root]
        for op in self._ops:
            if op.node is not None:
                stack.append(op.node)
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, _File):
                yield node
            else:
                stack.extend(node.durable.values())
                stack.extend(node.current.values())

    def crash_states(self, limit: int, seed: int) -> list[CrashImage]:
        """Up to ``limit`` distinct crash images; all of them when there are not more.

        The all-kept and all-lost images always come first; the rest of the product of
        per-operation variants is enumerated in full when it fits, else sampled with
        ``random.Random(seed)``.
        """
        rng = random.Random(seed)
        files = [f for f in self._files() if f.pending]
        per_file = [_file_variants(f, rng) for f in files]
        dir_choices = [(False, True)] * len(self._ops)
        axes: list[list[object]] = [*per_file, *([list(c) for c in dir_choices])]
        total = 1
        for a in axes:
            total *= len(a)
        combos: list[tuple[object, ...]] = []
        keep_all = (*(v[0] for v in per_file), *([True] * len(self._ops)))
        lose_all = (*(v[-1] for v in per_file), *([False] * len(self._ops)))
        combos.append(keep_all)
        if lose_all != keep_all:
            combos.append(lose_all)
        if total <= limit:
            combos += [c for c in itertools.product(*axes) if c not in (keep_all, lose_all)]
        else:
            seen = set(combos)
            tries = 0
            while len(combos) < limit and tries < limit * 20:
                tries += 1
                c = tuple(rng.choice(a) for a in axes)
                if c not in seen:
                    seen.add(c)
                    combos.append(c)
        out: list[CrashImage] = []
        images: set[tuple[tuple[str, ...], tuple[tuple[str, bytes], ...]]] = set()
        for c in combos:
            file_choice = dict(zip((id(f) for f in files), c[: len(files)], strict=True))
            applied = [op for op, on in zip(self._ops, c[len(files) :], strict=True) if on]
            img = self._image(file_choice, applied)
            key = (img.dirs, tuple(sorted(img.files.items())))
            if key in images:
                continue
            images.add(key)
            out.append(img)
        return out

    def _image(
        self, file_choice: dict[int, tuple[_Variant, ...]], applied: list[_DirOp]
    ) -> CrashImage:
        entries: dict[int, dict[str, _File | _Dir]] = {}

        def of(d: _Dir) -> dict[str, _File | _Dir]:
            if id(d) not in entries:
                entries[id(d)] = dict(d.durable)
            return entries[id(d)]

        for op in applied:
            op.apply(of)
        dirs: list[str] = []
        files: dict[str, bytes] = {}
        labels: list[str] = []
        stack: list[tuple[str, _Dir]] = [("/", self._root)]
        while stack:
            path, d = stack.pop()
            dirs.append(path)
            for name, node in sorted(of(d).items()):
                p = os.path.join(path, name)
                if isinstance(node, _Dir):
                    stack.append((p, node))
                    continue
                choice = file_choice.get(id(node), ())
                files[p] = _apply_variants(node, choice)
                if choice:
                    labels.append(f"{os.path.basename(p)}:{_describe(choice)}")
        if self._ops:
            labels.append(f"dir ops applied {len(applied)}/{len(self._ops)}")
        return CrashImage("; ".join(labels) or "all synced", tuple(sorted(dirs)), files)


def _describe(choice: tuple[_Variant, ...]) -> str:
    parts = []
    for v in choice:
        if v[0] == "pages":
            mask = "".join("1" if b else "0" for b in v[1])  # type: ignore[attr-defined]
            parts.append(f"pages[{mask}]{'+size' if v[2] else ''}")
        elif v[0] == "prefix":
            parts.append(f"prefix({v[1]})")
        else:
            parts.append(str(v[0]))
    return ",".join(parts)


def _file_variants(f: _File, rng: random.Random) -> list[tuple[_Variant, ...]]:
    """Variants of a file's pending operations, all-kept first and all-lost last."""
    per_op: list[list[_Variant]] = []
    for kind, off, data in f.pending:
        if kind == "t":
            per_op.append([("keep",), ("drop",)])
            continue
        per_op.append(_write_variants(off, data, rng))
    keep = tuple(v[0] for v in per_op)
    lose = tuple(v[-1] for v in per_op)
    total = 1
    for v in per_op:
        total *= len(v)
    if total <= _MAX_FILE_VARIANTS:
        rest = list(itertools.product(*per_op))
    else:  # a file with many pending writes: sample, fixed seed
        rest = list({tuple(rng.choice(v) for v in per_op) for _ in range(_MAX_FILE_VARIANTS)})
    combos = [keep, *(c for c in rest if c not in (keep, lose))]
    if lose != keep:
        combos.append(lose)
    return combos


def _write_variants(off: int, data: bytes, rng: random.Random) -> list[_Variant]:
    """Keep, zero-filled, torn prefixes, page subsets, and (last) dropped."""
    n = len(data)
    out: list[_Variant] = [("keep",), ("zeros",)]
    cuts = {1, n // 2, n - 1}
    # sector and page boundaries inside the write, counted on the absolute file position
    for unit in (SECTOR, PAGE):
        first = (off // unit + 1) * unit
        bounds = list(range(first, off + n, unit))
        if len(bounds) > 4:
            bounds = [bounds[0], bounds[-1], *rng.sample(bounds[1:-1], 2)]
        cuts.update(b - off for b in bounds)
    cuts.add(rng.randrange(1, n) if n > 1 else 1)
    out += [("prefix", c) for c in sorted(cuts) if 0 < c < n]
    first_page = off // PAGE
    last_page = (off + n - 1) // PAGE
    k = last_page - first_page + 1
    if k > 1:
        if k <= 4:
            masks = [m for m in itertools.product((True, False), repeat=k) if any(m) and not all(m)]
        else:
            masks = [
                tuple(i % 2 == 0 for i in range(k)),
                tuple(i % 2 == 1 for i in range(k)),
                tuple(i != 0 for i in range(k)),
                tuple(i == k - 1 for i in range(k)),
                tuple(rng.random() < 0.5 for _ in range(k)),
            ]
            masks = [m for m in masks if any(m) and not all(m)]
        for m in masks:
            out.append(("pages", m, False))
            if not m[-1]:
                out.append(("pages", m, True))
    out.append(("drop",))
    return out


def _apply_variants(f: _File, choice: tuple[_Variant, ...]) -> bytes:
    buf = bytearray(f.durable)
    if not choice:
        return bytes(buf)

    def put(at: int, chunk: bytes) -> None:
        if at > len(buf):
            buf.extend(bytes(at - len(buf)))
        buf[at : at + len(chunk)] = chunk

    for (kind, off, data), v in zip(f.pending, choice, strict=True):
        if kind == "t":
            if v[0] == "keep":
                if off < len(buf):
                    del buf[off:]
                else:
                    buf.extend(bytes(off - len(buf)))
            continue
        tag = v[0]
        if tag == "drop":
            continue
        if tag == "keep":
            put(off, data)
        elif tag == "zeros":
            put(off, bytes(len(data)))
        elif tag == "prefix":
            put(off, data[: int(v[1])])  # type: ignore[call-overload]
        else:
            mask, sized = v[1], v[2]
            first_page = off // PAGE
            for i, on in enumerate(mask):  # type: ignore[arg-type]
                lo = max(off, (first_page + i) * PAGE)
                hi = min(off + len(data), (first_page + i + 1) * PAGE)
                if on:
                    put(lo, data[lo - off : hi - off])
            if sized and len(buf) < off + len(data):
                buf.extend(bytes(off + len(data) - len(buf)))
    return bytes(buf)


class SimDisk(FileSystem):
    """:class:`FileSystem` over the in-memory model; see the module docstring.

    Paths are absolute and normalised; the root ``/`` exists. ``hook`` is called with a
    :class:`SyncPoint` before and after each durability call. ``fault`` may return an errno
    to make a call fail: it is called with the operation name and path first.
    """

    def __init__(self) -> None:
        self._root = _Dir()
        self._ops: list[_DirOp] = []
        self._fds: dict[int, tuple[_File, str]] = {}
        self._next_fd = 3
        self._syncs = 0
        self.hook: Callable[[SyncPoint], None] | None = None
        self.fault: Callable[[str, str], int | None] | None = None

    # -- model -------------------------------------------------------------------------

    def snapshot(self) -> DiskState:
        """A frozen copy of the durable state and everything pending."""
        return DiskState(self._root, self._ops)

    def _split(self, path: str) -> tuple[_Dir, str]:
        path = os.path.normpath(path)
        parent, name = os.path.split(path)
        d = self._lookup(parent)
        if not isinstance(d, _Dir):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), parent)
        return d, name

    def _lookup(self, path: str) -> _File | _Dir:
        path = os.path.normpath(path)
        node: _File | _Dir = self._root
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, _Dir) or part not in node.current:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            node = node.current[part]
        return node

    def _file(self, path: str) -> _File:
        node = self._lookup(path)
        if isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        return node

    def _handle(self, f: _File, path: str) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = (f, path)
        return fd

    def _get(self, fd: int) -> tuple[_File, str]:
        try:
            return self._fds[fd]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None

    def _inject(self, op: str, path: str) -> None:
        if self.fault is not None:
            err = self.fault(op, path)
            if err is not None:
                raise OSError(err, os.strerror(err), path)

    def _link(self, path: str, node: _File | _Dir, what: str) -> None:
        d, name = self._split(path)
        if name in d.current:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        d.current[name] = node
        self._ops.append(_DirOp(d, name, node, what=f"{what} {path}"))

    def _durability(self, kind: str, path: str, phase: str) -> None:
        if self.hook is not None:
            self.hook(SyncPoint(kind, path, phase, self._syncs))

    # -- FileSystem ----------------------------------------------------------------------

    def open_read(self, path: str) -> int:
        """Open an existing file."""
        self._inject("open_read", path)
        return self._handle(self._file(path), path)

    def open_write(self, path: str) -> int:
        """Open an existing file."""
        self._inject("open_write", path)
        return self._handle(self._file(path), path)

    def create(self, path: str) -> int:
        """Create a file; its name is pending until ``fsync_dir`` of the parent."""
        self._inject("create", path)
        f = _File()
        self._link(path, f, "create")
        return self._handle(f, path)

    def close(self, fd: int) -> None:
        """Forget a handle (and release a lock taken through it)."""
        f, _ = self._get(fd)
        if f.locked_by == fd:
            f.locked_by = None
        del self._fds[fd]

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Change what reads see; record the write as pending."""
        f, path = self._get(fd)
        self._inject("pwrite", path)
        data = bytes(data)
        if offset > len(f.current):
            f.current.extend(bytes(offset - len(f.current)))
        f.current[offset : offset + len(data)] = data
        f.pending.append(("w", offset, data))

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Read what the last writes left."""
        f, path = self._get(fd)
        self._inject("pread", path)
        return bytes(f.current[offset : offset + size])

    def size(self, fd: int) -> int:
        """Current size."""
        return len(self._get(fd)[0].current)

    def truncate(self, fd: int, size: int) -> None:
        """Cut or extend; pending until datasync."""
        f, path = self._get(fd)
        self._inject("truncate", path)
        if size < len(f.current):
            del f.current[size:]
        else:
            f.current.extend(bytes(size - len(f.current)))
        f.pending.append(("t", size, b""))

    def datasync(self, fd: int) -> None:
        """Durability point: the content and size become durable."""
        f, path = self._get(fd)
        self._syncs += 1
        self._durability("datasync", path, "before")
        self._inject("datasync", path)
        f.durable = bytearray(f.current)
        f.pending.clear()
        self._durability("datasync", path, "after")

    def listdir(self, path: str) -> list[str]:
        """Current names."""
        self._inject("listdir", path)
        d = self._lookup(path)
        if not isinstance(d, _Dir):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return list(d.current)

    def mkdir(self, path: str) -> None:
        """Create a directory; its name is pending until ``fsync_dir`` of the parent."""
        self._inject("mkdir", path)
        self._link(path, _Dir(), "mkdir")

    def rename(self, src: str, dst: str) -> None:
        """Move a name; pending until ``fsync_dir`` of either parent."""
        self._inject("rename", src)
        sd, sname = self._split(src)
        if sname not in sd.current:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
        dd, dname = self._split(dst)
        node = sd.current.pop(sname)
        dd.current[dname] = node
        self._ops.append(_DirOp(dd, dname, node, sd, sname, what=f"rename {src} {dst}"))

    def remove(self, path: str) -> None:
        """Unlink a file name; pending until ``fsync_dir``."""
        self._inject("remove", path)
        d, name = self._split(path)
        node = d.current.get(name)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        del d.current[name]
        self._ops.append(_DirOp(d, name, None, what=f"remove {path}"))

    def fsync_dir(self, path: str) -> None:
        """Durability point: every pending entry operation touching ``path`` becomes durable."""
        d = self._lookup(path)
        if not isinstance(d, _Dir):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        self._syncs += 1
        self._durability("fsync_dir", path, "before")
        self._inject("fsync_dir", path)
        keep: list[_DirOp] = []
        for op in self._ops:
            if op.touches(d):
                op.apply(lambda x: x.durable)
            else:
                keep.append(op)
        self._ops = keep
        self._durability("fsync_dir", path, "after")

    def try_lock(self, path: str) -> int | None:
        """Open or create ``path`` and lock it, unless another handle holds the lock."""
        self._inject("try_lock", path)
        try:
            f = self._file(path)
        except FileNotFoundError:
            f = _File()
            self._link(path, f, "create")
        if f.locked_by is not None:
            return None
        fd = self._handle(f, path)
        f.locked_by = fd
        return fd
