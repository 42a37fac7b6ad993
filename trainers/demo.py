"""DeMo (Peng, Quesnelle, Kingma 2024): data-parallel training that syncs only the fast part of the momentum.

Per parameter, with the rank's own gradient g (DDP's all-reduce is off) and learning rate eta:

    p *= 1 - eta * wd                            decoupled weight decay
    m  = beta * m + eta * g                      momentum, local to the rank
    c  = DCT(m), chunk by chunk                  orthonormal DCT-II, chunks of <= chunk x chunk
    keep the top-k |c| of each chunk; m -= IDCT(kept)     the rest stays in the local momentum
    all-gather the kept (index, value) pairs of every rank
    Q  = IDCT(mean over the ranks that sent a value, per index)
    p -= eta * sign(Q)

Written here rather than taken from pytorch-optimizer (4.1.0 ships a DeMo): that one needs einops,
calls torch.distributed.get_world_size() even in a single process, sends int64 indices (4x the
bytes of the int16 that a 64 x 64 chunk needs), averages with scatter_reduce (atomics on CUDA, so
ranks may round differently and drift apart) and is excluded from its own test coverage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist


def dct_basis(n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, n) orthonormal DCT-II matrix: row k is sqrt(2/n) c_k cos(pi (2i + 1) k / 2n), c_0 = 1/sqrt(2).

    The DCT of x is basis @ x and, the matrix being orthonormal, the inverse is basis.T @ c.
    """
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = math.sqrt(2 / n) * torch.cos(math.pi * (2 * i + 1) * k / (2 * n))
    basis[0] /= math.sqrt(2)
    return basis.to(device=device, dtype=dtype)


def chunk_size(n: int, target: int) -> int:
    """The largest divisor of n that is at most target: chunks tile the dimension exactly."""
    return max(d for d in range(1, min(n, target) + 1) if n % d == 0)


class ChunkedDCT:
    """The chunked DCT-II of one parameter shape, seen as a matrix (rows, cols); a vector is one row.

    Coefficients come out as (n_chunks, s1 * s2): one row per chunk, so top-k per chunk is a topk
    along the last dimension.
    """

    def __init__(self, shape: torch.Size, chunk: int, device: torch.device, dtype: torch.dtype):
        self.shape = shape
        self.rows = shape[0] if len(shape) >= 2 else 1
        self.cols = math.prod(shape) // self.rows if len(shape) else 1
        self.s1, self.s2 = chunk_size(self.rows, chunk), chunk_size(self.cols, chunk)
        self.b1 = dct_basis(self.s1, device, dtype)  # (s1, s1)
        self.b2 = dct_basis(self.s2, device, dtype)  # (s2, s2)

    @property
    def chunk_numel(self) -> int:
        return self.s1 * self.s2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x of self.shape -> coefficients (n_chunks, s1 * s2)."""
        blocks = x.reshape(self.rows // self.s1, self.s1, self.cols // self.s2, self.s2).transpose(1, 2)
        coeffs = self.b1 @ blocks @ self.b2.T  # (rows/s1, cols/s2, s1, s2): DCT of each block's rows and columns
        return coeffs.reshape(-1, self.chunk_numel)

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """coefficients (n_chunks, s1 * s2) -> a tensor of self.shape."""
        blocks = coeffs.reshape(self.rows // self.s1, self.cols // self.s2, self.s1, self.s2)
        x = (self.b1.T @ blocks @ self.b2).transpose(1, 2)
        return x.reshape(self.shape)


def index_dtype(chunk_numel: int) -> torch.dtype:
    """What a coefficient's index travels as: a chunk has at most 64 x 64 = 4096 positions by default,
    so int16 holds any index."""
    return torch.int16 if chunk_numel <= 2**15 else torch.int32


def compress(coeffs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest-magnitude coefficients of each chunk: (indices, values), both (n_chunks, k)."""
    idx = coeffs.abs().topk(min(k, coeffs.shape[-1]), dim=-1, sorted=False).indices
    return idx, coeffs.gather(-1, idx)


def decompress(indices: list[torch.Tensor], values: list[torch.Tensor], n_chunks: int,
               chunk_numel: int) -> torch.Tensor:
    """Dense coefficients from each rank's (indices, values): per index, the mean over the ranks that sent it.

    Ranks are added one at a time, in rank order: within one rank the indices are distinct, so
    no two writes collide and every rank computes the same sums bit for bit.
    """
    total = values[0].new_zeros(n_chunks, chunk_numel)
    count = values[0].new_zeros(n_chunks, chunk_numel)
    for idx, val in zip(indices, values):
        idx = idx.long()
        total.scatter_add_(-1, idx, val)
        count.scatter_add_(-1, idx, torch.ones_like(val))
    return total / count.clamp(min=1)


class DeMo(torch.optim.Optimizer):
    """Decoupled Momentum optimization. Params must not be all-reduced by DDP: the optimizer syncs.

    `bytes_sent` is what this rank put into the all-gathers of the last step (indices + values;
    0 in a single process, which sends nothing).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.0, beta: float = 0.999,
                 chunk: int = 64, topk: int = 32, group: dist.ProcessGroup | None = None):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if chunk < 1 or topk < 1:
            raise ValueError("chunk and topk must be positive")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.beta, self.chunk, self.topk, self.group = beta, chunk, topk, group
        self.bytes_sent = 0
        self._dct: dict[tuple, ChunkedDCT] = {}

    def transform(self, p: torch.Tensor) -> ChunkedDCT:
        key = (p.shape, p.device, p.dtype)
        if key not in self._dct:
            self._dct[key] = ChunkedDCT(p.shape, self.chunk, p.device, p.dtype)
        return self._dct[key]

    def world(self) -> int:
        return dist.get_world_size(self.group) if dist.is_available() and dist.is_initialized() else 1

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params, lrs, sent = [], [], []
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                m = state["momentum"]
                p.mul_(1 - lr * group["weight_decay"])
                m.mul_(self.beta)
                if p.grad is not None:  # no gradient still takes part: every rank sends the same shapes
                    m.add_(p.grad, alpha=lr)
                dct = self.transform(p)
                idx, val = compress(dct.encode(m), self.topk)
                m.sub_(dct.decode(decompress([idx], [val], idx.shape[0], dct.chunk_numel)))
                sent += [val, idx.to(index_dtype(dct.chunk_numel))]
                params.append(p)
                lrs.append(lr)
        received = self.all_gather(sent)
        for n, (p, lr) in enumerate(zip(params, lrs)):
            dct = self.transform(p)
            vals, idxs = [r[2 * n] for r in received], [r[2 * n + 1] for r in received]
            q = dct.decode(decompress(idxs, vals, vals[0].shape[0], dct.chunk_numel))
            p.add_(q.sign_(), alpha=-lr)
        return loss

    def all_gather(self, tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Every rank's copy of `tensors`, in rank order, through one all-gather of their bytes.

        One collective per step, not two per parameter; bytes also pass int16, which neither gloo
        nor nccl gathers.
        """
        world = self.world()
        if world == 1:
            self.bytes_sent = 0
            return [tensors]
        flat = torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in tensors])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat, group=self.group)
        self.bytes_sent = flat.numel()
        sizes = [t.nbytes for t in tensors]
        # clone: a part may start at an offset that its dtype cannot be viewed from
        return [[part.clone().view(t.dtype).view_as(t) for t, part in zip(tensors, rank.split(sizes))]
                for rank in gathered]

    def averaged_state_dict(self) -> dict:
        """The state dict with each momentum averaged over the ranks (a collective: every rank calls it).

        The residual momentum differs from rank to rank; a checkpoint keeps its mean, which every
        rank of the resumed run, on any world size, starts from.
        """
        sd = self.state_dict()
        world = self.world()
        if world == 1:
            return sd
        state = {}
        for key, s in sd["state"].items():
            m = s["momentum"].clone()
            dist.all_reduce(m, group=self.group)
            state[key] = {**s, "momentum": m / world}
        return {**sd, "state": state}


class Signum(torch.optim.Optimizer):
    """Sign of momentum (Bernstein et al. 2018) on DDP's all-reduced gradients: DeMo with nothing left
    out, the reference for what DeMo's sign step can reach at a given step count.

        p *= 1 - eta * wd;   m = beta * m + (1 - beta) * g;   p -= eta * sign(m)

    Written here: torch.optim has no sign optimizer (Lion, in pytorch-optimizer, is a different rule).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.0, beta: float = 0.9):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("momentum", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                m.lerp_(p.grad, 1 - group["beta"])
                p.add_(m.sign(), alpha=-group["lr"])
