"""The step loop and accelerate checkpoints: exact resumption, atomic saves, refusal of changed settings."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from generative_augmentation.core.config import Config
from generative_augmentation.core.training import (
    Checkpointer,
    batch_indices,
    latest_checkpoint,
    make_accelerator,
    run_steps,
    step_generator,
)


@dataclass(frozen=True)
class Settings(Config):
    where = "toy"
    learning_rate: float = 0.1
    train_steps: int = 6


class Tensors:
    """A stateful object accelerate does not track, with a list of tensors in its state (like diffusers' EMA)."""

    def __init__(self) -> None:
        self.shadow = [torch.zeros(3), torch.ones(2)]
        self.count = 0

    def state_dict(self) -> dict:
        return {"shadow_params": self.shadow, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.shadow, self.count = [tensor.clone() for tensor in state["shadow_params"]], state["count"]


def train(
    root: Path | None, settings: Settings, stop_after: int | None = None
) -> tuple[torch.nn.Module, list[float], Tensors]:
    accelerator = make_accelerator("cpu", mixed_precision=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    extra = Tensors()
    checkpointer = Checkpointer(root, accelerator, settings, resumable=("train_steps",), extras={"extra": extra})
    start, losses = checkpointer.resume()
    data = torch.linspace(-1, 1, 40).reshape(10, 4)

    def step(index: int) -> float:
        batch = data[torch.from_numpy(batch_indices(3, index, 4, len(data)))]
        noise = torch.randn(batch.shape, generator=step_generator(3, index))
        loss = ((model(batch + noise) - 1) ** 2).mean()
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        extra.shadow[0] += 1
        extra.count += 1
        return float(loss.detach())

    def checkpoint(completed: int) -> bool:
        checkpointer.save(completed, losses)
        return stop_after is not None and completed >= stop_after

    run_steps(
        step,
        start=start,
        total=settings.train_steps,
        losses=losses,
        description="toy",
        every=2,
        on_every=checkpoint,
        progress=False,
    )
    return model, losses, extra


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    model, losses, extra = train(None, Settings())
    _, first_part, _ = train(tmp_path, Settings(), stop_after=4)
    assert len(first_part) == 4 and latest_checkpoint(tmp_path).name == "step-00000004"
    resumed, all_losses, resumed_extra = train(tmp_path, Settings())
    assert all_losses == losses
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    assert resumed_extra.count == extra.count == 6 and torch.equal(resumed_extra.shadow[0], extra.shadow[0])
    assert [path.name for path in tmp_path.iterdir()] == ["step-00000006"]  # older ones pruned, no partial left


def test_raising_train_steps_continues_but_other_changes_are_refused(tmp_path: Path) -> None:
    _, short, _ = train(tmp_path, Settings(train_steps=4))
    _, longer, _ = train(tmp_path, Settings(train_steps=6))
    assert longer[:4] == short and len(longer) == 6
    with pytest.raises(ValueError, match=r"toy.learning_rate: checkpoint 0.1, now 0.5.*delete"):
        train(tmp_path, Settings(train_steps=8, learning_rate=0.5))


def test_a_half_written_checkpoint_is_never_resumed(tmp_path: Path) -> None:
    train(tmp_path, Settings(train_steps=2))
    (tmp_path / ".partial-step-00000004").mkdir()
    (tmp_path / "step-00000009").mkdir()  # no record file: not a complete checkpoint
    assert latest_checkpoint(tmp_path).name == "step-00000002"


def test_batches_are_seeded_per_step_and_cover_every_row_each_epoch() -> None:
    first = np.concatenate([batch_indices(5, step, 4, 10) for step in range(5)])  # two epochs of 10
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert np.array_equal(batch_indices(5, 3, 4, 10), batch_indices(5, 3, 4, 10))
    assert not np.array_equal(batch_indices(5, 0, 10, 10), batch_indices(6, 0, 10, 10))
    assert torch.equal(torch.rand(3, generator=step_generator(1, 2)), torch.rand(3, generator=step_generator(1, 2)))


def test_on_every_can_stop_the_loop_early() -> None:
    losses: list[float] = []
    run_steps(
        float,
        start=0,
        total=10,
        losses=losses,
        description="x",
        every=3,
        on_every=lambda done: done >= 6,
        progress=False,
    )
    assert losses == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_crowded_machine_is_named_with_the_thread_count_to_use(caplog) -> None:
    from generative_augmentation.core.crowding import warn_if_crowded

    with caplog.at_level("WARNING"):
        assert warn_if_crowded(2, busy=2.0, cores=2)
    assert "keep about 2.0 of the 2 cores busy: 2 torch threads will stall" in caplog.text
    assert "--params=runtime.num_threads=1" in caplog.text
    assert not warn_if_crowded(2, busy=0.2, cores=2)  # an idle machine: no warning
    assert not warn_if_crowded(1, busy=6.0, cores=2)  # one thread does not stall itself
    assert warn_if_crowded(8, busy=4.0, cores=8) and "runtime.num_threads=4" in caplog.text


def test_idle_openmp_threads_sleep_only_on_a_busy_machine_and_never_against_the_users_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from generative_augmentation.core.crowding import choose_openmp_wait_policy

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as before anything imported it; restored after the test
    assert choose_openmp_wait_policy(busy=0.3) is None and "OMP_WAIT_POLICY" not in os.environ
    assert choose_openmp_wait_policy(busy=1.6) == "PASSIVE" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert choose_openmp_wait_policy(busy=5.0) is None and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setitem(sys.modules, "torch", object())  # OpenMP already read its settings: too late to set one
    assert choose_openmp_wait_policy(busy=5.0) is None and "OMP_WAIT_POLICY" not in os.environ


TWO_THREAD_FIT = """
import hashlib, torch
torch.set_num_threads(2)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 3, 3, padding=1))
optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
images = torch.randn(16, 3, 32, 32)
for _ in range(5):
    loss = torch.nn.functional.mse_loss(model(images), images.flip(-1))
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


@pytest.mark.slow
def test_the_openmp_wait_policy_changes_no_arithmetic() -> None:
    digests = {}
    for policy in ("ACTIVE", "PASSIVE"):
        result = subprocess.run(
            [sys.executable, "-c", TWO_THREAD_FIT],
            env=os.environ | {"OMP_WAIT_POLICY": policy},
            capture_output=True,
            text=True,
            check=True,
        )
        digests[policy] = result.stdout.strip()
    assert len(digests["ACTIVE"]) == 64 and digests["ACTIVE"] == digests["PASSIVE"]


def test_a_busy_neighbour_is_measured_in_cores() -> None:
    from generative_augmentation.core.crowding import busy_cores

    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this platform")
    quiet = busy_cores(0.3)
    stop = time.monotonic() + 1.5

    def spin() -> None:
        while time.monotonic() < stop:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()  # one core's worth of work, or the machine is busier still
    loaded = busy_cores(0.6)
    spinner.join()
    assert 0.0 <= quiet <= (os.cpu_count() or 1)
    assert loaded >= 0.7
