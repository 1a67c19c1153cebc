"""The selective scan as one compiled CPU loop (numba), forward and backward: `scan_backend: numba`.

Every pure-PyTorch form of the scan moves tensors of L x D x N (or L/T x D x N per step) through memory several
times; on a CPU that traffic, not the arithmetic, is the cost (docs/sccosf.md). Here each channel's state (N
floats) stays in registers while the loop walks the sequence: one exp, two multiply-adds and one dot product per
state update, nothing of length L x N written. numba compiles the loops once per machine (5-7 s, then
cached on disk); channels run in parallel on numba's threads.

Layout, as `ssm._scan_chunks` after the bias and softplus of delta: u, delta: batch x D x L; A: D x N; B, C:
batch x G x L x N (contiguous, G groups of D/G channels). The D skip stays in PyTorch (ssm.selective_scan).

Backward: the forward keeps the state every CHECKPOINT_STEPS steps (batch x D x L/T x N, small); the backward
walks the chunks from the last, recomputes each chunk's states from its checkpoint, then runs the adjoint
recurrence backwards through it:
    g_t = C_t dy_t + a_{t+1} * g_{t+1}          (a_t = exp(delta_t A), the gradient of the state h_t)
    dB_t += g_t delta_t u_t,   dC_t += dy_t h_t,   d(delta_t u_t) = g_t . B_t
    d(delta_t A) = g_t * h_{t-1} * a_t  ->  d delta_t (times A), dA (times delta_t)
B and C are shared by the channels of a group, so their gradients are summed over channels: each thread sums
into its own slice (a fixed split of every group's channels, so the result does not depend on the thread count).
"""
from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch

# Steps between the states the forward keeps for the backward (memory batch x D x L/64 x N; the backward
# recomputes at most 64 states per channel at a time).
CHECKPOINT_STEPS = 64
# Each group's channels are split into this many slices for the backward's sums of dB and dC: enough slices
# to keep 2-16 threads busy with one group, few enough that the partial sums (slices x batch x G x L x N)
# stay a small multiple of B's size.
CHANNEL_SLICES = 8
# One kernel call at a time: numba's fallback threading layer (workqueue, where neither OpenMP nor TBB is
# present) aborts the process on concurrent parallel calls, and the node can predict in one thread while
# it warms a new model up in another.
_KERNEL_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _kernels():
    """The compiled forward and backward (scan_kernel_loops.py), or None when numba is not installed."""
    try:
        from . import scan_kernel_loops
    except ImportError:
        return None
    return scan_kernel_loops.forward, scan_kernel_loops.backward


def _launch(kernel, *arguments) -> None:
    """A kernel call on as many threads as torch's operators use, one call at a time."""
    import numba

    with _KERNEL_LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel(*arguments)


def numba_available() -> bool:
    return _kernels() is not None


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        forward, _ = _kernels()
        batch, channels, length = u.shape
        y = torch.empty_like(u)
        checkpoints = u.new_empty(batch, channels, -(-length // CHECKPOINT_STEPS), A.shape[1])
        _launch(forward, _array(u), _array(delta), _array(A), _array(B), _array(C), y.numpy(), checkpoints.numpy(),
                CHECKPOINT_STEPS)
        ctx.save_for_backward(u, delta, A, B, C, checkpoints)
        return y

    @staticmethod
    def backward(ctx, dy):
        _, backward = _kernels()
        u, delta, A, B, C, checkpoints = ctx.saved_tensors
        slices = min(CHANNEL_SLICES, u.shape[1] // B.shape[1])
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dA = u.new_zeros(u.shape[0], *A.shape)
        dB, dC = (u.new_zeros(slices, *B.shape) for _ in range(2))
        _launch(backward, _array(u), _array(delta), _array(A), _array(B), _array(C), _array(dy), checkpoints.numpy(),
                CHECKPOINT_STEPS, du.numpy(), ddelta.numpy(), dA.numpy(), dB.numpy(), dC.numpy())
        return du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0)


@torch.compiler.disable  # numpy arrays inside: compiled callers run it as a call, not a graph to trace
def numba_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """y_t = C_t h_t with h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, on CPU float32 tensors laid out as the
    module docstring says; differentiable in all five."""
    if _kernels() is None:
        raise RuntimeError("scan_backend 'numba' needs numba (`pip install numba`); or use 'auto' or 'chunked'")
    if u.device.type != "cpu":
        raise RuntimeError(f"scan_backend 'numba' runs on CPU tensors only, got {u.device}; use 'auto' or 'chunked'")
    return _NumbaScan.apply(u, delta, A, B, C)
