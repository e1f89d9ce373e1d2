"""Decoders for tests of msnpipe.decoders, as `tests.decoder_stubs:<name>`; light to import, since
every worker process that runs one imports this module."""

import ctypes


def crash_on_marked(data: list[bytes]) -> list[str | None]:
    """Takes down its process on any JPEG holding b"CRASH", as a decoder's segfault would, and
    decodes the rest."""
    if any(b"CRASH" in d for d in data):
        ctypes.string_at(0)  # a segfault: no exception, the process is gone
    return [None] * len(data)


def never_starts(data: list[bytes]) -> list[str | None]:
    raise ImportError("libfake.so: cannot open shared object file")
