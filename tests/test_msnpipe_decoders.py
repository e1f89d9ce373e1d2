"""msnpipe.decoders: each decoder of the embed stage, in worker processes that may crash."""

import os

import pytest

from msnpipe.decoders import CPU_DECODERS, GPU_DECODERS, Sample, decode_group, failures, usable
from tests.conftest import jpeg_bytes, write


def junk_between_segments(seed: int) -> bytes:
    data = jpeg_bytes(seed=seed)
    at = data.index(b"\xff\xdb")
    return data[:at] + b"\x00\x12" + data[at:]


@pytest.fixture
def files(tmp_path):
    """Six good JPEGs and, between them, two with junk between segments."""
    out = []
    for i in range(8):
        data = junk_between_segments(i) if i in (2, 5) else jpeg_bytes(seed=i)
        out.append(Sample(f"{i:08d}", str(write(tmp_path / f"{i}.jpg", data))))
    return out


def test_the_cpu_decoders_run_here_and_the_others_say_why_not():
    names, missing = usable()
    assert names[: len(CPU_DECODERS)] == list(CPU_DECODERS)  # DALI and nvImageCodec are pinned
    for gpu in GPU_DECODERS:
        assert gpu in names or missing[gpu] == "no GPU here"


@pytest.mark.parametrize("decoder, refused", [("libjpeg-turbo", []), ("dali-cpu", ["00000002", "00000005"]),
                                              ("nvimgcodec-cpu", ["00000002", "00000005"])])
def test_each_decoder_names_what_it_refuses(files, decoder, refused):
    """libjpeg only warns about bytes between segments; DALI's and nvImageCodec's parser refuse them,
    and their messages (printed by C code, not in the exception) are kept."""
    bad = decode_group(decoder, files)
    assert [s.key for s, _ in bad] == refused
    assert all("Invalid marker" in message for _, message in bad)


def test_a_crashing_decoder_names_the_samples_that_crash_it(tmp_path, files):
    marked = [Sample(f"{90 + i:08d}", str(write(tmp_path / f"m{i}.jpg", jpeg_bytes(seed=i) + b"CRASH")))
              for i in range(2)]
    groups = [files[:3], files[3:5] + [marked[0]] + files[5:] + [marked[1]], files[:2]]
    got = list(failures("tests.decoder_stubs:crash_on_marked", groups, workers=2))
    assert [g for g, _ in got] == groups  # every group reported, in order, after the crash too
    assert [[(s.key, why) for s, why in bad] for _, bad in got] == [
        [], [(s.key, "tests.decoder_stubs:crash_on_marked crashed the process decoding it")
             for s in marked], []]


def test_a_decoder_that_cannot_start_is_one_error(files):
    with pytest.raises(RuntimeError, match="cannot run here: libfake.so"):
        list(failures("tests.decoder_stubs:never_starts", [files], workers=1))


def test_samples_are_read_at_their_offset(tmp_path):
    """A shard member is `size` bytes at `offset` of its tar."""
    a, b = jpeg_bytes(seed=1), junk_between_segments(2)
    blob = write(tmp_path / "blob", b"x" * 100 + a + b + b"y" * 7)
    samples = [Sample("a", str(blob), 100, len(a)), Sample("b", str(blob), 100 + len(a), len(b))]
    assert [s.key for s, _ in decode_group("dali-cpu", samples)] == ["b"]
    assert os.path.getsize(blob) == 107 + len(a) + len(b)
