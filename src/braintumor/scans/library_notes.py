"""What pydicom and nibabel say while a file is read, gathered so that the reader can say it in one line.

Left alone, pydicom warns (with its own source path) and logs the same text, and nibabel's logger has a stream handler
of its own besides propagating to the root logger: a file with an odd header printed up to four lines, some twice,
none naming the file. `medical.library_warnings` reads each DICOM and NIfTI file under `notes()` and logs one line.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LIBRARY_LOGGERS = ("pydicom", "nibabel", "nibabel.global")


class _Gather(logging.Handler):
    def __init__(self, said: list[str]):
        super().__init__(level=logging.INFO)
        self.said = said

    def emit(self, record: logging.LogRecord) -> None:
        _add(self.said, record.getMessage())


def _add(said: list[str], text: str) -> None:
    line = " ".join(text.split())  # one line, whatever the library's text held
    if line not in said:
        said.append(line)


@contextlib.contextmanager
def notes() -> Iterator[list[str]]:
    """The distinct warnings and log records (INFO and up) of pydicom and nibabel inside the block, in order, also
    when the block raises; nothing of theirs reaches stderr meanwhile. (warnings.catch_warnings is process-wide: in
    threads reading files at once a note may land in the other file's list; it is never printed raw, and answers are
    not affected.)"""
    with contextlib.suppress(ImportError):  # nibabel adds its stream handler when first imported: before the swap
        import nibabel.imageglobals  # noqa: F401
    said: list[str] = []
    gather = _Gather(said)
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers[:] = [gather]
        logger.propagate = False
        logger.setLevel(logging.INFO)  # nibabel says what it fixed in a header at INFO
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield said
            finally:
                for warning in caught:
                    _add(said, str(warning.message))
    finally:
        for logger, handlers, propagate, level in saved:
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(level)
