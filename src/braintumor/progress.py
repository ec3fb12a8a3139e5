"""Progress bars: tqdm where installed; the training core also runs where only torch and torchvision are."""

from __future__ import annotations

try:
    from tqdm import tqdm as progress_bar
except ImportError:  # a bare CUDA machine: iterate without a bar

    def progress_bar(iterable=None, *args, **kwargs):  # noqa: ARG001
        return _Plain(iterable)

    class _Plain:
        def __init__(self, iterable):
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            pass

        def set_postfix(self, **kwargs):
            pass
