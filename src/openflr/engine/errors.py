"""Exceptions of the engine; each carries the guest path or backup file it is about."""

from __future__ import annotations

__all__ = [
    "BackupError",
    "EngineError",
    "GuestFileUnreadable",
    "GuestPathInvalid",
    "GuestPathNotFound",
    "IsAFolder",
    "NotAFolder",
    "UnsupportedBackup",
]


class EngineError(Exception):
    """Base of all engine errors."""


class BackupError(EngineError):
    """A backup file or disk image cannot be opened (missing, corrupt, unknown format)."""


class UnsupportedBackup(BackupError):
    """A restore point that is listed but cannot be read yet (an incremental, an encrypted file)."""


class GuestPathInvalid(EngineError):
    """A guest path that is not a path at all (a NUL byte, an escape above its root)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"invalid guest path {path!r}: {why}")
        self.path = path
        self.why = why


class GuestPathNotFound(EngineError):
    """No file or folder exists at a guest path."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no file or folder at guest path {path!r}")
        self.path = path


class NotAFolder(EngineError):
    """A folder operation on a file."""

    def __init__(self, path: str) -> None:
        super().__init__(f"guest path {path!r} is a file, not a folder")
        self.path = path


class IsAFolder(EngineError):
    """A file operation on a folder."""

    def __init__(self, path: str) -> None:
        super().__init__(f"guest path {path!r} is a folder, not a file")
        self.path = path


class GuestFileUnreadable(EngineError):
    """A file whose data cannot be read (damaged, or stored in a form the engine cannot decode)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"cannot read guest file {path!r}: {why}")
        self.path = path
        self.why = why
