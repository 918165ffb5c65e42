"""The one atomic writer of the suite: every file a run, an export or a tool writes goes to a
temporary file (or folder) beside its target and is renamed over it once complete, so a kill
or a failed write never leaves a half-written file, and the file it would have replaced is
left as it was.

A write that fails for a reason outside the code (a full disk, a read-only folder, a quota)
raises :class:`SaveError`, which names the file and the cause (``ENOSPC``, ``EROFS``, ...),
whatever library did the writing: an ``OSError`` keeps its ``errno``; an error of another
type (torch's ``RuntimeError`` "unexpected pos" when its zip writer hits a full disk, a
safetensors error) is put down to the folder's state when the folder is full or not
writable, and is otherwise a bug that keeps its traceback.

Temporary names are ``.<name>.<pid>.<id>.tmp``: :func:`remove_stale_temporaries` removes the
ones a killed process left (the next start of a run calls it on the whole work_dir).

**Digests.** A file that a later step reads back (a runner checkpoint, a ``best/`` weights file,
an export) gets a SHA-256 computed *while it is written* (from the bytes in memory, or through
the stream torch writes), stored beside it as ``<file>.sha256`` in ``sha256sum``'s format (so
``sha256sum -c epoch_3.pth.sha256`` checks it too); a folder written whole (a
``save_pretrained`` export) gets ``SHA256SUMS`` inside it. The order of a replacement keeps
the pair consistent at every moment a kill can come: the old digest is removed, the new file
renamed into place, then the new digest written, so a file is either with its own digest or
without one, never with another file's. :func:`verify` checks a file against its digest
before it is trusted (:class:`DigestMismatch` names the file and both digests); a file
without one (written before digests existed, or by another tool) is reported as unverified.
"""
import csv
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .errors import UserError


class SaveError(OSError):
    """A write of ``path`` failed with ``cause``; the file it would have replaced is intact.
    Keeps the cause's ``errno`` (``ENOSPC``, ``EROFS``, ``EDQUOT``, ...)."""

    def __init__(self, path: str, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), path)
        self.path, self.cause = path, cause

    def __str__(self) -> str:
        code = errno.errorcode.get(self.errno or 0)
        return f'cannot write {self.path}: {self.strerror}' + (f' ({code})' if code else '')


def folder_cannot_take_writes(folder: str) -> Optional[OSError]:
    """Why nothing more can be written in ``folder`` (full, read-only, not writable), as the
    ``OSError`` a write would have raised; ``None`` when it looks writable."""
    try:
        st = os.statvfs(folder)
    except OSError as e:
        return e
    if st.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS))
    if not os.access(folder, os.W_OK | os.X_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES))
    if st.f_bavail == 0 or (st.f_files and st.f_favail == 0):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


@contextmanager
def failures_named(path: str) -> Iterator[None]:
    """A failed write inside becomes a :class:`SaveError` naming ``path`` and the cause (see
    the module's description); other errors pass unchanged."""
    try:
        yield
    except SaveError:
        raise
    except OSError as e:
        raise SaveError(path, e) from e
    except Exception as e:  # noqa: BLE001 - a library's own error type for a failed write
        cause = folder_cannot_take_writes(os.path.dirname(os.path.abspath(path)))
        if cause is None:
            raise
        raise SaveError(path, cause) from e


def temporary_name(path: str) -> str:
    """The temporary sibling of ``path`` an atomic write goes through."""
    return os.path.join(os.path.dirname(path),
                        f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextmanager
def atomic_write(path: str, folder: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (an empty folder with ``folder=True``); once the
    block has written it, it replaces ``path`` (a folder of an earlier write is moved aside
    first and removed after), so that ``path`` holds a complete write or the previous one,
    never a mix. Failures are :class:`SaveError`\\ s naming ``path``."""
    path = os.path.abspath(path)
    tmp = temporary_name(path)
    with failures_named(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if folder:
            os.makedirs(tmp)
    try:
        with failures_named(path):
            yield tmp
            old = None
            if folder and os.path.isdir(path):
                old = temporary_name(path)
                os.replace(path, old)
            os.replace(tmp, path)
        if old:
            _remove(old)
    finally:
        _remove(tmp)


def atomic_path(path: str):
    """:func:`atomic_write` of a file."""
    return atomic_write(path)


@contextmanager
def atomic_digested(path: str) -> Iterator['HashingFile']:
    """Write ``path`` atomically and durably through a :class:`HashingFile` (the block writes
    into it); once complete, it replaces ``path`` and its digest is stored beside it
    (:func:`replace_with_digest`)."""
    path = os.path.abspath(path)
    tmp = temporary_name(path)
    with failures_named(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with failures_named(path):
            with open(tmp, 'wb') as f:
                hashing = HashingFile(f)
                yield hashing
                f.flush()
                os.fsync(f.fileno())
            replace_with_digest(tmp, path, hashing.hexdigest())
    finally:
        _remove(tmp)


def atomic_dir(path: str):
    """:func:`atomic_write` of a folder."""
    return atomic_write(path, folder=True)


def write_bytes(data: bytes, path: str, digest: bool = False) -> None:
    """``data`` to ``path`` atomically and durably (flushed to disk before the rename); with
    ``digest``, its SHA-256 (of the bytes in memory) stored beside it."""
    if digest:
        with atomic_digested(path) as f:
            f.write(data)
        return
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def save_json(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=2)
            f.write('\n')


def save_text(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)


def save_csv(rows: List[dict], path: str) -> None:
    """Rows as CSV, the columns every key of any row (in order of appearance)."""
    with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def save_figure(fig, path: str, dpi: int = 120) -> None:
    """A matplotlib figure as an image (its format from ``path``'s suffix), then closed."""
    import matplotlib.pyplot as plt
    try:
        with atomic_path(path) as tmp, open(tmp, 'wb') as f:
            fig.savefig(f, dpi=dpi, format=os.path.splitext(path)[1][1:] or 'png')
    finally:
        plt.close(fig)


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` atomically and durably, with its digest stored beside it (computed from
    the stream torch writes). torch writes through the open file, so a write that fails is the
    file system's ``OSError``."""
    with atomic_digested(path) as f:
        torch.save(obj, f)


# ----------------------------------------------------------------------------- digests
#: the suffix of a file's digest, beside it (``sha256sum``'s format)
DIGEST_SUFFIX = '.sha256'
#: the digests of a folder written whole, inside it (``sha256sum``'s format)
FOLDER_DIGESTS = 'SHA256SUMS'


class HashingFile:
    """A binary file object that hashes (SHA-256) what is written through it."""

    def __init__(self, f):
        self._f = f
        self._hash = hashlib.sha256()

    def write(self, data) -> int:
        self._hash.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def digest_path(path: str) -> str:
    """Where the digest of ``path`` is stored."""
    return path + DIGEST_SUFFIX


def _digest_line(digest: str, name: str) -> str:
    return f'{digest}  {name}\n'


def replace_with_digest(tmp: str, path: str, digest: str) -> None:
    """Move the complete file ``tmp`` to ``path`` and store ``digest`` beside it, in the order
    that never pairs a file with another file's digest: the old digest removed, the file
    renamed, the new digest written (atomically)."""
    side = digest_path(path)
    if os.path.lexists(side):
        os.remove(side)
    os.replace(tmp, path)
    _remember(path, digest)
    write_text_durably(_digest_line(digest, os.path.basename(path)), side)


def write_text_durably(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_folder_digests(folder: str) -> None:
    """``SHA256SUMS`` in ``folder``: every file under it (relative paths), for a folder that
    is about to replace another whole (its files are hashed as they are, just written)."""
    lines = []
    for parent, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name == FOLDER_DIGESTS and parent == folder:
                continue
            full = os.path.join(parent, name)
            lines.append(_digest_line(file_sha256(full), os.path.relpath(full, folder)))
    write_text_durably(''.join(lines), os.path.join(folder, FOLDER_DIGESTS))


class DigestMismatch(UserError):
    """A file whose content differs from the digest stored when it was written: damaged on
    disk or in a copy. The message names the file and both digests."""

    def __init__(self, path: str, recorded: str, actual: str):
        super().__init__(f'{path} does not match its digest ({digest_path(path)} records sha256 '
                         f'{recorded}, the file now has {actual}): it was damaged after it was '
                         'written')
        self.path, self.recorded, self.actual = path, recorded, actual


#: what :func:`verify` says of a file
VERIFIED, UNVERIFIED = 'verified', 'unverified'


def recorded_digest(path: str) -> Optional[str]:
    """The digest stored beside ``path`` (``None`` when there is none); a digest file that is
    not one is an error naming it."""
    side = digest_path(path)
    if not os.path.isfile(side):
        return None
    with open(side) as f:
        text = f.read().strip()
    digest = text.split()[0] if text else ''
    if not re.fullmatch(r'[0-9a-f]{64}', digest):
        raise UserError(f'{side} is not a digest file (it should hold the SHA-256 of '
                        f'{os.path.basename(path)}, as sha256sum writes it): remove it to load '
                        'the file unverified')
    return digest


def verify(path: str) -> str:
    """Check ``path`` against the digest stored beside it: :data:`VERIFIED`, or
    :data:`UNVERIFIED` when it has none; a mismatch is a :class:`DigestMismatch`. A folder is
    checked against its ``SHA256SUMS`` (every file listed there, and only those)."""
    if os.path.isdir(path):
        return verify_folder(path)
    recorded = recorded_digest(path)
    if recorded is None:
        return UNVERIFIED
    return _against(path, recorded, file_sha256(path))


def _against(path: str, recorded: Optional[str], actual: str) -> str:
    """:data:`VERIFIED` when ``actual`` is ``recorded`` (the digest stored beside ``path``),
    :data:`UNVERIFIED` when there is none, else a :class:`DigestMismatch`."""
    if recorded is None:
        return UNVERIFIED
    if actual != recorded:
        raise DigestMismatch(path, recorded, actual)
    return VERIFIED


def verify_folder(folder: str) -> str:
    """:func:`verify` of a folder written whole (its ``SHA256SUMS``)."""
    listing = os.path.join(folder, FOLDER_DIGESTS)
    if not os.path.isfile(listing):
        return UNVERIFIED
    with open(listing) as f:
        entries = [line.rstrip('\n').split('  ', 1) for line in f if line.strip()]
    for entry in entries:
        if len(entry) != 2 or not re.fullmatch(r'[0-9a-f]{64}', entry[0]):
            raise UserError(f'{listing} is not a digest listing (lines of "<sha256>  <file>", '
                            'as sha256sum writes them): remove it to load the folder unverified')
        recorded, name = entry
        full = os.path.join(folder, name)
        if not os.path.isfile(full):
            raise UserError(f'{full} is listed in {listing} but missing: the folder is '
                            'incomplete')
        actual = file_sha256(full)
        if actual != recorded:
            raise DigestMismatch(full, recorded, actual)
    return VERIFIED


_hashes: Dict[Tuple[str, int, int, int, int], str] = {}


def file_key(path: str, st: Optional[os.stat_result] = None) -> Tuple[str, int, int, int, int]:
    """What tells one version of a file from another (path, inode, size, modification and
    change time: any write, or a reset modification time, moves the last): the key under
    which what was read of it is remembered."""
    st = st or os.stat(path)
    return os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def read_verified(path: str, check: Optional[Callable[[bytes], None]] = None) -> bytes:
    """A file's bytes in one read: ``check(bytes)`` first if given (it raises on what it
    finds wrong), then their SHA-256 computed from the same bytes (remembered, so that a later
    digest of this version of the file reads nothing) and checked against the digest stored
    beside it, if any (a mismatch is a :class:`DigestMismatch`)."""
    data, digest = _read_remembered(path, check)
    _against(path, recorded_digest(path), digest)
    return data


def _read_remembered(path: str, check: Optional[Callable[[bytes], None]] = None
                     ) -> Tuple[bytes, str]:
    """A file's bytes and SHA-256 from one read (``check(bytes)`` first, if given); the
    digest is remembered for this version of the file (:func:`file_sha256` reads nothing)."""
    with open(path, 'rb') as f:
        st = os.fstat(f.fileno())  # the version read, even if the file is replaced meanwhile
        data = f.read()
    if check is not None:
        check(data)
    digest = hashlib.sha256(data).hexdigest()
    _hashes[file_key(path, st)] = digest
    return data, digest


def read_folder_verified(folder: str, names: Sequence[str]) -> Dict[str, bytes]:
    """The bytes of the files ``names`` (relative paths) of a folder written whole, each in
    one read, and the folder checked against its ``SHA256SUMS`` (:func:`verify_folder`) with
    those files' digests computed from the same reads."""
    data = {name: _read_remembered(os.path.join(folder, name))[0] for name in names}
    verify_folder(folder)
    return data


def _remember(path: str, digest: str) -> None:
    try:
        _hashes[file_key(path)] = digest
    except OSError:
        pass


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's content (remembered per path, inode, size, modification and
    change time, so a file written or verified once in a process is not read again for it)."""
    key = file_key(path)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def remove_with_digest(path: str) -> None:
    """Remove a file and the digest stored beside it."""
    for p in (digest_path(path), path):
        if os.path.lexists(p):
            os.remove(p)


#: what :func:`temporary_name` makes: the hidden name, the writer's pid, a random id
TEMPORARY = re.compile(r'^\..+\.(\d+)\.[0-9a-f]{8}\.tmp(?:\.old)?$')


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def remove_stale_temporaries(folder: str) -> List[str]:
    """Remove the temporary files and folders of atomic writes that a killed process left
    anywhere under ``folder`` (those of processes still running are kept); returns them."""
    removed = []
    for parent, dirs, files in os.walk(folder):
        for name in list(dirs) + files:
            m = TEMPORARY.match(name)
            if not m:
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and _process_exists(pid):
                continue  # its writer is still running
            path = os.path.join(parent, name)
            _remove(path)
            removed.append(path)
            if name in dirs:
                dirs.remove(name)
    return removed
