"""The numba loops of scan_kernel.py (imported only when numba is installed; module-level, so that numba
caches their machine code on disk: closures that call other compiled functions are compiled again in every
process). The forward keeps the state every `checkpoint_steps` steps; the backward starts from those."""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

COMPILE_OPTIONS = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}


@intrinsic
def float32_from_bits(typing_context, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


@numba.njit(fastmath=True, cache=True, inline="always")
def exp(x):
    """exp(x) in float32 arithmetic that vectorises (numba's math.exp calls libm one value at a time: without
    SVML, which PyPI's llvmlite lacks, it was most of the kernel's time): Cody-Waite reduction x = k ln2 + r,
    |r| <= ln2 / 2, Cephes' degree-7 polynomial for exp(r), times 2^k from the exponent bits. Within 1e-7
    of exp relative to it for |x| < 87; saturates beyond (the scan's exponents are delta A <= 0, and
    exp(-87) is below 1e-37)."""
    x = min(max(x, np.float32(-87.0)), np.float32(87.0))
    k = math.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)  # ln 2 in two parts
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * float32_from_bits(np.int32(np.int32(k) + 127) << 23)


@numba.njit(**COMPILE_OPTIONS)
def forward(u, delta, A, B, C, y, checkpoints, checkpoint_steps):
    batch, channels, length = u.shape
    state_size = A.shape[1]
    per_group = channels // B.shape[1]
    for task in numba.prange(batch * channels):
        b, d = task // channels, task % channels
        g = d // per_group
        h = np.zeros(state_size, np.float32)
        for chunk in range(checkpoints.shape[2]):
            checkpoints[b, d, chunk] = h
            for t in range(chunk * checkpoint_steps, min((chunk + 1) * checkpoint_steps, length)):
                step = delta[b, d, t]
                drive = step * u[b, d, t]
                out = np.float32(0.0)
                for n in range(state_size):
                    h[n] = exp(step * A[d, n]) * h[n] + drive * B[b, g, t, n]
                    out += C[b, g, t, n] * h[n]
                y[b, d, t] = out


@numba.njit(**COMPILE_OPTIONS)
def backward(u, delta, A, B, C, dy, checkpoints, checkpoint_steps, du, ddelta, dA, dB, dC):
    batch, channels, length = u.shape
    groups, state_size = B.shape[1], A.shape[1]
    per_group = channels // groups
    slices = dB.shape[0]
    chunks = checkpoints.shape[2]
    for task in numba.prange(batch * groups * slices):
        b, rest = task // (groups * slices), task % (groups * slices)
        g, part = rest // slices, rest % slices
        states = np.empty((checkpoint_steps + 1, state_size), np.float32)  # h_{t-1} and h_t of the chunk
        decays = np.empty((checkpoint_steps, state_size), np.float32)
        carry = np.empty(state_size, np.float32)
        for d in range(g * per_group + part, (g + 1) * per_group, slices):
            carry[:] = 0.0  # a_{t+1} * g_{t+1}
            for chunk in range(chunks - 1, -1, -1):
                start = chunk * checkpoint_steps
                stop = min(start + checkpoint_steps, length)
                states[0] = checkpoints[b, d, chunk]
                for t in range(start, stop):
                    i = t - start
                    step = delta[b, d, t]
                    drive = step * u[b, d, t]
                    for n in range(state_size):
                        decays[i, n] = exp(step * A[d, n])
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
