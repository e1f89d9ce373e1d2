"""Where an embedding run's seconds go: the first batch apart, then waiting for data against
computing, on CUDA from CUDA events.

    clock = Clock(device)
    for batch in stream:
        started = clock.begin();  ...queue the forward passes...;  clock.end(started, images)
    stats = clock.stats(total_images)   # once the last rows are in the store
"""

from __future__ import annotations

import time

import torch


class Clock:
    """Where a run's seconds go. Past the first batch (compile, warm-up: `first_s`), on CUDA
    `compute_s` is the GPU's own time from each batch's first forward launch to its last kernel
    (CUDA events, read at the end) and `wait_s` the rest of the wall time (the model's stream
    idle, waiting for data); on the CPU both are wall-clock. `steady_s` runs from the end of the
    first batch (device synchronized) until the last rows are in the store."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.start = self.mark = time.perf_counter()
        self.first_s: float | None = None
        self.first_images = 0
        self.wait = self.compute = 0.0  # CPU: wall-clock sums
        self.spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def begin(self) -> torch.cuda.Event | None:
        """A batch has arrived; its forward passes are about to be queued."""
        now = time.perf_counter()
        if self.first_s is not None:
            self.wait += now - self.mark
        self.mark = now
        if self.cuda and self.first_s is not None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return None

    def end(self, started: torch.cuda.Event | None, images: int) -> None:
        """The batch's forward passes are queued (and the batch before has landed)."""
        now = time.perf_counter()
        if self.first_s is None:  # the first batch: compile and warm-up, kept apart
            if self.cuda:
                torch.cuda.synchronize(self.device)
                now = time.perf_counter()
            self.first_s, self.first_images = now - self.start, images
        else:
            self.compute += now - self.mark
            if started is not None:
                done = torch.cuda.Event(enable_timing=True)
                done.record()
                self.spans.append((started, done))
        self.mark = now

    def stats(self, images: int) -> dict:
        """Once the last rows are in the store."""
        now = time.perf_counter()
        first = self.first_s if self.first_s is not None else now - self.start
        steady = now - self.start - first
        compute = self.compute
        if self.cuda:
            torch.cuda.synchronize(self.device)
            compute = sum(a.elapsed_time(b) for a, b in self.spans) / 1000
        return {"images": images, "wall_s": now - self.start, "first_batch_s": first,
                "first_batch_images": self.first_images, "steady_s": steady,
                "steady_images": images - self.first_images, "compute_s": compute,
                "wait_s": max(0.0, steady - compute)}
