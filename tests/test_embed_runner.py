"""embed.runner: the out-of-memory back-off (on the CPU, with a model that raises CUDA's error
above a size), the drift meter, batch planning, and rows on their way to the host."""

import numpy as np
import pytest
import torch

from embed.encoders import EncoderSpec
from embed.runner import AUTO_BATCHES, EncoderRunner, HostRows, largest_batch, run_chunked

TINY = EncoderSpec("tiny_a", "test_tiny", patch=16, dim=32, depth=2, heads=2)


class Fussy(torch.nn.Module):
    """Wraps a model; raises torch.cuda.OutOfMemoryError for batches above `limit`."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {len(x)})")
        return self.inner(x)


def test_run_chunked_halves_until_it_fits_and_keeps_the_size():
    calls = []

    def fn(c):
        calls.append(len(c))
        if len(c) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return c * 2

    x = torch.arange(10.0)[:, None]
    out, chunk = run_chunked(fn, x, 1 << 30, what="test")
    assert torch.equal(out, x * 2) and chunk == 2
    assert calls[:3] == [10, 5, 2]  # the whole batch, half of it, then halves of the rest
    out, chunk = run_chunked(fn, x, chunk, what="test")  # the next batch starts at the size that worked
    assert torch.equal(out, x * 2) and set(calls[-5:]) == {2}
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_chunked(lambda c: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")), x, 4, what="test")


def _runner(limit: int, drift: int = 0) -> tuple[EncoderRunner, torch.nn.Module]:
    from embed.checkpoint import random_model
    vit = random_model(TINY)
    runner = EncoderRunner(TINY, vit, kind="cls_prenorm", device=torch.device("cpu"), precision="fp32",
                           compile=False, drift_images=drift)
    reference = EncoderRunner(TINY, vit, kind="cls_prenorm", device=torch.device("cpu"), precision="fp32",
                              compile=False)
    runner.model = Fussy(runner.eager, limit)
    return runner, reference


def test_forward_backs_off_and_gives_the_same_rows():
    runner, reference = _runner(limit=3)
    x = torch.randn(7, 3, 224, 224)
    rows = runner.forward(x)
    torch.testing.assert_close(rows, reference.forward(x), rtol=1e-5, atol=1e-5)
    assert runner.chunk == 3 and max(runner.model.sizes[-3:]) <= 3


def test_the_drift_pass_backs_off_too(monkeypatch):
    runner, _ = _runner(limit=100, drift=6)
    runner.eager = Fussy(runner.eager, 2)
    x = torch.randn(6, 3, 224, 224)
    rows = runner.forward(x)
    runner.measure_drift(x, rows, real=6)
    d = runner.drift()
    assert d["images"] == 6 and d["min_cos"] > 0.9999
    assert runner.drift_chunk == 1  # 6 fails, 3 fails, 1 fits


def test_drift_measures_what_bf16_changes():
    from embed.checkpoint import random_model
    runner = EncoderRunner(TINY, random_model(TINY), kind="cls_prenorm", device=torch.device("cpu"),
                           precision="bf16", compile=False, drift_images=5)
    x = torch.randn(8, 3, 224, 224)
    runner.measure_drift(x, runner.forward(x), real=8)
    d = runner.drift()
    assert d["images"] == 5 and 0.99 <= d["min_cos"] < 0.99999 and d["min_cos"] <= d["mean_cos"] < 1


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precisions_run_under_autocast_and_stay_close(precision, dtype):
    from embed.checkpoint import random_model
    vit = random_model(TINY)
    half = EncoderRunner(TINY, vit, kind="cls_prenorm", device=torch.device("cpu"), precision=precision,
                         compile=False)
    full = EncoderRunner(TINY, vit, kind="cls_prenorm", device=torch.device("cpu"), precision="fp32",
                         compile=False)
    seen = []
    hook = vit.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(6, 3, 224, 224)
    a, b = half.forward(x), full.forward(x)
    hook.remove()
    assert seen == [dtype, torch.float32] and a.dtype == torch.float32  # rows come back as float32
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.min() >= 0.99 and not torch.equal(a, b)


def test_largest_batch_plans_within_the_headroom():
    mib = 2**20
    assert largest_batch(fixed=500 * mib, per_image=20 * mib, free=80 * 1024 * mib) == 1024
    assert largest_batch(fixed=500 * mib, per_image=20 * mib, free=10 * 1024 * mib) == 256  # 5620 MiB <= 8192
    assert largest_batch(fixed=9 * 1024 * mib, per_image=mib, free=10 * 1024 * mib) == 1  # nothing fits
    assert AUTO_BATCHES[0] == 1024 and AUTO_BATCHES[-1] == 1


def test_host_rows_on_the_cpu_are_the_tensor():
    rows = torch.randn(4, 8)
    np.testing.assert_array_equal(HostRows(rows).numpy(), rows.numpy())


@pytest.mark.gpu
def test_auto_batch_measures_a_step_and_host_rows_copy_asynchronously():
    from embed.checkpoint import random_model
    from embed.encoders import get_spec
    from embed.runner import auto_batch
    device = torch.device("cuda")
    spec = get_spec("vits16_800ep")
    runner = EncoderRunner(spec, random_model(spec), kind="cls_prenorm",
                           device=device, precision="bf16", compile=False)
    plain = auto_batch([runner], device)
    with_views = auto_batch([runner], device, views=4, drift=True)
    assert plain >= 64 and with_views <= plain
    rows = torch.randn(256, 384, device=device)
    np.testing.assert_array_equal(HostRows(rows).numpy(), rows.cpu().numpy())
