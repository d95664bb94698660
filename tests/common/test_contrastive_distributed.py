"""Global negatives across processes: two CPU processes (gloo), each holding half of a batch, give the loss
and the (DDP-averaged) parameter gradients of one process holding the whole batch."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
HALF_BATCH = 6
# Loss settings of the ucl rows (objective, beta, tau+, oracle masking).
SETTINGS = {
    "infonce": {},
    "dcl": {"debias_tau_plus": 0.1},
    "hcl": {"hard_negative_beta": 1.0, "debias_tau_plus": 0.1},
    "fn_masked": {"mask_false_negatives": True},
    "supcon": {"objective": "supcon"},
}


class TinyEncoder(torch.nn.Sequential):
    """A two-layer MLP encoder (no BatchNorm: per-process batch statistics differ from whole-batch ones by
    design, so they are not part of this check)."""

    num_features = 16

    def __init__(self):
        super().__init__(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16))


def _module(settings: dict, *, global_negatives: bool = True):
    from common.lit.contrastive import ContrastiveModule

    torch.manual_seed(0)  # same initial weights in every process
    backbone = TinyEncoder()
    return ContrastiveModule(
        backbone,
        num_classes=4,
        num_train_examples=2 * WORLD_SIZE * HALF_BATCH,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        projection_dims=[16, 8],
        projection_batch_norm=False,
        global_negatives=global_negatives,
        loss_backend="chunked",
        **settings,
    ).double()


def _global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    size = WORLD_SIZE * HALF_BATCH
    x = torch.randn(size, 12, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (size,), generator=gen)
    return {
        "x1": x + 0.3 * torch.randn(size, 12, generator=gen, dtype=torch.float64),
        "x2": x + 0.3 * torch.randn(size, 12, generator=gen, dtype=torch.float64),
        "y": labels,
        "y_clean": labels,
        "index": torch.arange(100, 100 + size),
    }


def _loss_and_grads(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad()
    loss = module.contrastive_loss(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.detach().clone() for name, p in module.named_parameters()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        full = _global_batch()
        shard = {k: v[rank * HALF_BATCH : (rank + 1) * HALF_BATCH] for k, v in full.items()}
        results = {}
        for name, settings in SETTINGS.items():
            for global_negatives in (True, False):
                loss, grads = _loss_and_grads(_module(settings, global_negatives=global_negatives), shard)
                # What DDP does: average the gradients (and, for reporting, the losses) over processes.
                for grad in grads.values():
                    dist.all_reduce(grad)
                    grad /= WORLD_SIZE
                dist.all_reduce(loss)
                results[(name, global_negatives)] = (loss / WORLD_SIZE, grads)
        if rank == 0:
            torch.save(results, Path(out_dir) / "distributed.pt")
        # Both processes leave together: a rank that tears gloo down while the other still sends aborts.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_dir = tmp_path_factory.mktemp("ddp")
    for attempt in range(3):
        try:
            mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
            break
        except mp.ProcessExitedException:
            # gloo now and then aborts a process at teardown ("terminate called without an active
            # exception") after the results are written; anything else, or three aborts, is a failure.
            if (out_dir / "distributed.pt").exists():
                break
            if attempt == 2:
                raise
    return torch.load(out_dir / "distributed.pt")


@pytest.mark.parametrize("name", list(SETTINGS))
def test_global_negatives_match_one_process_on_the_whole_batch(name: str, distributed_results: dict):
    loss, grads = distributed_results[(name, True)]
    reference_loss, reference_grads = _loss_and_grads(_module(SETTINGS[name]), _global_batch())
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-5)
    assert set(grads) == set(reference_grads)
    for param, grad in grads.items():
        assert reference_grads[param].abs().max() > 0, param
        torch.testing.assert_close(grad, reference_grads[param], rtol=1e-5, atol=1e-5, msg=param)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_local_negatives_differ(name: str, distributed_results: dict):
    """Sanity of the test: without the gather each process sees only its own negatives; the loss changes."""
    loss, _ = distributed_results[(name, False)]
    reference_loss, _ = _loss_and_grads(_module(SETTINGS[name]), _global_batch())
    assert abs(float(loss) - float(reference_loss)) > 1e-3
