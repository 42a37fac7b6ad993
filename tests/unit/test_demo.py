"""Data-parallel pretraining on two gloo ranks (AdamW+DDP, DeMo, Signum+DDP), and DeMo's DCT compression."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ponder.trainers import pretrain
from ponder.trainers.demo import ChunkedDCT, DeMo, Signum, compress, dct_basis, decompress

STEPS = 8


def cfg_args(out, **kw) -> dict:
    args = dict(out=str(out), preset="micro", steps=STEPS, batch_size=16, micro_batch=4, lr=3e-3, warmup=2,
                vocab_size=512, ckpt_every=4, compile=False, bf16=False, threads=1, mix="forward=1",
                metrics=str(out) + ".metrics.jsonl")
    return {**args, **kw}


def _rank_main(rank: int, world: int, port: int, args: dict, die_at_step: int | None) -> None:
    """One torchrun-like rank: train (or stop at die_at_step), then save the parameters this rank ended with."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    models = []
    real = pretrain.make_optimizer

    def keep_model(model, cfg):
        models.append(model)
        return real(model, cfg)

    pretrain.make_optimizer = keep_model
    real_loss, calls = pretrain.batch_loss, []

    def batch_loss(*a, **k):
        calls.append(1)
        if die_at_step is not None and len(calls) == die_at_step + 1:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    pretrain.batch_loss = batch_loss
    try:
        pretrain.train(pretrain.PretrainConfig(**args))
    except KeyboardInterrupt:
        return
    torch.save({n: p.detach().clone() for n, p in models[0].named_parameters()}, f"{args['out']}.rank{rank}.pt")


def run_ranks(world: int, args: dict, die_at_step: int | None = None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(world, port, args, die_at_step), nprocs=world)


def metrics(args: dict) -> list[dict]:
    return [json.loads(line) for line in open(args["metrics"])]


@pytest.mark.slow  # trains or spawns
@pytest.mark.parametrize("optimizer", ["adamw", "demo", "signum"])
def test_two_gloo_ranks_stay_identical_and_the_loss_falls(tmp_path, optimizer):
    args = cfg_args(tmp_path / optimizer, optimizer=optimizer)
    run_ranks(2, args)
    ranks = [torch.load(f"{args['out']}.rank{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0])
    rows = metrics(args)
    losses = [r["loss"] for r in rows]
    assert len(losses) == STEPS and sum(losses[-3:]) / 3 < 0.85 * losses[0], losses
    record = json.loads((tmp_path / optimizer / "train_record.json").read_text())
    n_params = sum(t.numel() for t in ranks[0].values())
    assert record["world_size"] == 2 and record["optimizer"] == optimizer
    if optimizer == "demo":
        assert 0 < max(r["bytes_sent"] for r in rows) < 4 * n_params / 20
    else:
        assert {r["bytes_sent"] for r in rows} == {4 * n_params}  # every fp32 gradient, once per step
    if optimizer == "adamw":
        # each rank takes half the step's micro-batches: the global batch, and so the loss, is the one-process one
        single = cfg_args(tmp_path / "single", optimizer=optimizer)
        pretrain.train(pretrain.PretrainConfig(**single))
        assert losses == pytest.approx([r["loss"] for r in metrics(single)], rel=1e-4)


@pytest.mark.slow  # trains or spawns
def test_demo_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path):
    args = cfg_args(tmp_path / "r", optimizer="demo")
    run_ranks(2, args, die_at_step=5)  # after the step-4 checkpoint
    state = torch.load(tmp_path / "r" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 4 and state["optimizer_name"] == "demo" and len(state["losses"]) == 4
    assert all("momentum" in s for s in state["optimizer"]["state"].values())  # the ranks' mean residual
    pretrain.train(pretrain.PretrainConfig(**args))  # two ranks wrote it, one process resumes it
    assert [r["step"] for r in metrics(args)] == [0, 1, 2, 3, 4] + [4, 5, 6, 7]
    record = json.loads((tmp_path / "r" / "train_record.json").read_text())
    assert record["world_size"] == 1 and not (tmp_path / "r" / "checkpoint").exists()


def chunk_signal(n_chunks: int, chunk_numel: int, k: int, lo: float, hi: float,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Coefficients with k nonzero entries per chunk, magnitudes in [lo, hi), random signs."""
    coeffs = torch.zeros(n_chunks, chunk_numel, dtype=torch.float64)
    for c in range(n_chunks):
        free = torch.ones(chunk_numel, dtype=torch.bool) if exclude is None else exclude[c] == 0
        pos = torch.nonzero(free).flatten()[torch.randperm(int(free.sum()))[:k]]
        sign = torch.randint(0, 2, (k,), dtype=torch.float64) * 2 - 1
        coeffs[c, pos] = sign * (lo + (hi - lo) * torch.rand(k, dtype=torch.float64))
    return coeffs


def test_dct_basis_is_the_orthonormal_dct_ii():
    basis = dct_basis(8, dtype=torch.float64)
    assert torch.allclose(basis @ basis.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    x = torch.randn(8, dtype=torch.float64)
    n = torch.arange(8, dtype=torch.float64)
    k = 3  # DCT-II: X_k = sqrt(2/N) sum_n x_n cos(pi (2n + 1) k / 2N)
    assert torch.isclose((basis @ x)[k], (2 / 8) ** 0.5 * (x * torch.cos(torch.pi * (2 * n + 1) * k / 16)).sum())


@pytest.mark.parametrize("shape", [(128, 192), (256,), (96, 40)])
def test_round_trip_recovers_k_components_per_chunk_exactly(shape):
    torch.manual_seed(0)
    k = 5
    dct = ChunkedDCT(torch.Size(shape), 64, "cpu", torch.float64)
    n_chunks = (dct.rows // dct.s1) * (dct.cols // dct.s2)
    coeffs = chunk_signal(n_chunks, dct.chunk_numel, k, 0.5, 2.0)
    x = dct.decode(coeffs)
    idx, val = compress(dct.encode(x), k)
    assert torch.equal(torch.sort(idx).values, torch.sort(torch.nonzero(coeffs)[:, 1].view(n_chunks, k)).values)
    assert torch.allclose(dct.decode(decompress([idx], [val], n_chunks, dct.chunk_numel)), x, atol=1e-12)


def test_demo_step_sends_the_top_k_keeps_the_residual_and_steps_by_the_sign():
    torch.manual_seed(0)
    k, lr, wd, shape = 4, 0.5, 0.1, (128, 128)
    p0 = torch.randn(shape, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = DeMo([{"params": [p], "weight_decay": wd}], lr=lr, beta=0.9, chunk=64, topk=k)
    dct = opt.transform(p)
    strong = chunk_signal(4, dct.chunk_numel, k, 1.0, 2.0)
    weak = chunk_signal(4, dct.chunk_numel, 20, 0.01, 0.1, exclude=strong)
    p.grad = dct.decode(strong + weak) / lr  # momentum starts at 0, so m = lr * g = the signal
    opt.step()
    assert torch.allclose(opt.state[p]["momentum"], dct.decode(weak), atol=1e-12)  # the residual stays local
    sent = dct.decode(strong)
    expected = p0 * (1 - lr * wd) - lr * torch.sign(sent)  # decoupled weight decay, then the sign step
    assert torch.allclose(p.detach(), expected, atol=1e-12)
    assert opt.bytes_sent == 0  # one process sends nothing


def test_signum_steps_by_the_sign_of_the_momentum():
    p0 = torch.tensor([1.0, -2.0, 3.0])
    p = torch.nn.Parameter(p0.clone())
    opt = Signum([{"params": [p], "weight_decay": 0.1}], lr=0.5, beta=0.9)
    p.grad = torch.tensor([2.0, -1.0, 0.0])
    opt.step()  # m = 0.1 g = [0.2, -0.1, 0]
    p1 = p0 * 0.95 - 0.5 * torch.tensor([1.0, -1.0, 0.0])
    assert torch.allclose(p.detach(), p1)
    p.grad = torch.tensor([-1.0, 2.0, 1.0])
    opt.step()  # m = [0.08, 0.11, 0.1]: the first coordinate still steps along the momentum, against g
    assert torch.allclose(p.detach(), p1 * 0.95 - 0.5)


def test_decompress_means_over_the_ranks_that_sent_an_index():
    idx = [torch.tensor([[0, 2]]), torch.tensor([[2, 3]])]
    val = [torch.tensor([[1.0, 4.0]]), torch.tensor([[2.0, -5.0]])]
    assert decompress(idx, val, 1, 4).tolist() == [[1.0, 0.0, 3.0, -5.0]]
