"""The selective scan as one compiled CPU loop (numba), forward and backward: `scan_backend: numba`.

Every pure-PyTorch form of the scan moves tensors of L x D x N (or L/T x D x N per step) through memory several
times; on a CPU that traffic, not the arithmetic, is the cost (docs/sccosf.md). Here each channel's state (N
floats) stays in registers while the loop walks the sequence: one exp, two multiply-adds and one dot product per
state update, nothing of length L x N written. numba compiles the loops once per machine (about 3 s, then
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

import math
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
    """The compiled forward and backward, or None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None
    compile_options = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}

    @numba.njit(**compile_options)
    def forward(u, delta, A, B, C, y, checkpoints):
        batch, channels, length = u.shape
        state_size = A.shape[1]
        per_group = channels // B.shape[1]
        for task in numba.prange(batch * channels):
            b, d = task // channels, task % channels
            g = d // per_group
            h = np.zeros(state_size, np.float32)
            for t in range(length):
                if t % CHECKPOINT_STEPS == 0:
                    checkpoints[b, d, t // CHECKPOINT_STEPS] = h
                step = delta[b, d, t]
                drive = step * u[b, d, t]
                out = np.float32(0.0)
                for n in range(state_size):
                    h[n] = math.exp(step * A[d, n]) * h[n] + drive * B[b, g, t, n]
                    out += C[b, g, t, n] * h[n]
                y[b, d, t] = out

    @numba.njit(**compile_options)
    def backward(u, delta, A, B, C, dy, checkpoints, du, ddelta, dA, dB, dC):
        batch, channels, length = u.shape
        groups, state_size = B.shape[1], A.shape[1]
        per_group = channels // groups
        slices = dB.shape[0]
        chunks = checkpoints.shape[2]
        for task in numba.prange(batch * groups * slices):
            b, rest = task // (groups * slices), task % (groups * slices)
            g, part = rest // slices, rest % slices
            states = np.empty((CHECKPOINT_STEPS + 1, state_size), np.float32)  # h_{t-1} and h_t of the chunk
            decays = np.empty((CHECKPOINT_STEPS, state_size), np.float32)
            carry = np.empty(state_size, np.float32)
            for d in range(g * per_group + part, (g + 1) * per_group, slices):
                carry[:] = 0.0  # a_{t+1} * g_{t+1}
                for chunk in range(chunks - 1, -1, -1):
                    start = chunk * CHECKPOINT_STEPS
                    stop = min(start + CHECKPOINT_STEPS, length)
                    states[0] = checkpoints[b, d, chunk]
                    for t in range(start, stop):
                        i = t - start
                        step = delta[b, d, t]
                        drive = step * u[b, d, t]
                        for n in range(state_size):
                            decays[i, n] = math.exp(step * A[d, n])
                            states[i + 1, n] = decays[i, n] * states[i, n] + drive * B[b, g, t, n]
                    for t in range(stop - 1, start - 1, -1):
                        i = t - start
                        step = delta[b, d, t]
                        drive = step * u[b, d, t]
                        grad_out = dy[b, d, t]
                        grad_drive = np.float32(0.0)
                        grad_step = np.float32(0.0)
                        for n in range(state_size):
                            grad_h = carry[n] + grad_out * C[b, g, t, n]
                            dC[part, b, g, t, n] += grad_out * states[i + 1, n]
                            dB[part, b, g, t, n] += grad_h * drive
                            grad_drive += grad_h * B[b, g, t, n]
                            grad_exponent = grad_h * states[i, n] * decays[i, n]
                            grad_step += grad_exponent * A[d, n]
                            dA[b, d, n] += grad_exponent * step
                            carry[n] = decays[i, n] * grad_h
                        du[b, d, t] = grad_drive * step
                        ddelta[b, d, t] = grad_step + grad_drive * u[b, d, t]

    return forward, backward


def _launch(kernel, *arrays) -> None:
    """A kernel call on as many threads as torch's operators use, one call at a time."""
    import numba

    with _KERNEL_LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel(*arrays)


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
        _launch(forward, _array(u), _array(delta), _array(A), _array(B), _array(C), y.numpy(), checkpoints.numpy())
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
                du.numpy(), ddelta.numpy(), dA.numpy(), dB.numpy(), dC.numpy())
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
