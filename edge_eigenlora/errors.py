"""One exception type for user-facing problems, so callers and the CLI can tell them from bugs."""

from __future__ import annotations

import errno

__all__ = ["EdgeEigenLoraError", "describe_os_error"]


class EdgeEigenLoraError(ValueError):
    """Bad input or an impossible request. The message names the file or field and the fix."""


_OS_FIXES = {
    errno.EACCES: "check the permissions of the file and its folder, or choose another path",
    errno.EPERM: "check the permissions of the file and its folder, or choose another path",
    errno.ENOSPC: "the disk is full: free some space or write elsewhere (files already there were left as they were)",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "the path is a folder; give a file",
    errno.ENAMETOOLONG: "use a shorter name",
}


def describe_os_error(exc: OSError) -> str:
    """A one-line message for an OSError (permission denied, disk full...): the file, the cause and the fix."""
    where = exc.filename if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    cause = exc.strerror or str(exc) or type(exc).__name__
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and the disk")
    return f"{where}: {cause}; {fix}."
