"""build_state/resume carry the whole training position: scheduler, grad scaler and a stateful data loader.

The data-order test is the one a user can see: a shuffled loader resumed mid-epoch from a checkpoint
yields exactly the batches an uninterrupted run yields, and training ends on bit-identical weights.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
stateful_dataloader = pytest.importorskip("torchdata.stateful_dataloader")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ckptctl.training.manager import CheckpointManager, build_state, load_file  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")

EPOCHS, BATCHES, SAVE_AT = 2, 10, 13  # 10 batches an epoch; the crash is mid-way through the second epoch


def _setup(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    data = TensorDataset(torch.arange(BATCHES * 4 * 3, dtype=torch.float32).reshape(-1, 3) / 100, torch.arange(BATCHES * 4.0))
    loader = stateful_dataloader.StatefulDataLoader(data, batch_size=4, shuffle=True)
    return model, optimizer, scheduler, loader


def _train(model, optimizer, scheduler, loader, *, epoch=0, step=0, stop_at=None, manager=None):
    """The usual loop; returns the sample indices of every batch seen (the data order)."""
    seen = []
    for epoch in range(epoch, EPOCHS):
        for x, y in loader:
            loss = (model(x).squeeze(1) - y / 40).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            seen.append((y.long().tolist()))
            if step == stop_at:
                manager.save(build_state(step=step, epoch=epoch, model=model, optimizer=optimizer,
                                         scheduler=scheduler, dataloader=loader), step=step)  # fmt: skip
                return seen
    return seen


def test_shuffled_stateful_loader_resumed_mid_epoch_replays_the_same_batches(tmp_path):
    model, optimizer, scheduler, loader = _setup(seed=0)
    uninterrupted = _train(model, optimizer, scheduler, loader)
    expected_weight = model.weight.detach().clone()

    manager = CheckpointManager(tmp_path)
    first = _train(*_setup(seed=0), stop_at=SAVE_AT, manager=manager)
    assert first == uninterrupted[:SAVE_AT]

    model2, optimizer2, scheduler2, loader2 = _setup(seed=1)  # a new process: other weights, other RNG
    resumed = manager.resume(model2, optimizer2, scheduler=scheduler2, dataloader=loader2)
    assert (resumed.step, resumed.epoch) == (SAVE_AT, 1)
    rest = _train(model2, optimizer2, scheduler2, loader2, epoch=resumed.epoch, step=resumed.step)
    assert rest == uninterrupted[SAVE_AT:]  # the rest of epoch 1 in its order, then epoch 2's new order
    assert torch.equal(model2.weight.detach(), expected_weight)
    assert scheduler2.state_dict() == scheduler.state_dict()
    saved = load_file(tmp_path / "latest.pt")
    assert saved["dataloader_state"] and saved["scheduler"]["last_epoch"] == SAVE_AT


def test_grad_scaler_and_scheduler_round_trip(tmp_path):
    model, optimizer, scheduler, _ = _setup(seed=0)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale tensor is created lazily
    scaler.update(new_scale=256.0)
    manager = CheckpointManager(tmp_path)
    manager.save(build_state(step=5, epoch=0, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler), step=5)
    model2, optimizer2, scheduler2, _ = _setup(seed=1)
    scaler2 = torch.amp.GradScaler("cpu", init_scale=1024.0)
    manager.resume(model2, optimizer2, scheduler=scheduler2, scaler=scaler2)
    assert scaler2.get_scale() == 256.0
    assert scheduler2.get_last_lr() == scheduler.get_last_lr() and scheduler2.last_epoch == 5


def test_a_plain_dataloader_is_refused_rather_than_silently_reshuffled(tmp_path):
    model, optimizer, _, _ = _setup(seed=0)
    plain = DataLoader(TensorDataset(torch.zeros(8, 3)), batch_size=2, shuffle=True)
    with pytest.raises(TypeError, match="DataLoader has no state_dict.*StatefulDataLoader"):
        build_state(step=1, epoch=0, model=model, dataloader=plain)
    CheckpointManager(tmp_path).save(build_state(step=1, epoch=0, model=model), step=1)
    with pytest.raises(TypeError, match="DataLoader has no load_state_dict"):
        CheckpointManager(tmp_path).resume(model, optimizer, dataloader=plain)
