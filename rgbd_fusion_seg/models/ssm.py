"""Selective state-space scans (Mamba's S6) for SC-CoSF: one `selective_scan` function with three backends,
and the blocks built on it: S6, Cross S6 (SC-CoSF §3.2.1), SS2D and the ICRVSS block (§3.2.2).

Layout (that of mamba_ssm's `selective_scan_fn`): u, delta: batch x D x L; A: D x N; B, C: batch x N x L, or
batch x G x N x L with D = G x d (G groups of d channels, e.g. SS2D's four directions); D: D; delta_bias: D.
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t h_t + D u_t
with delta = softplus(delta + delta_bias) when delta_softplus.

Backends: "mamba_ssm" (the CUDA kernels; an optional GPU install), "numba" (one compiled CPU loop, forward and
backward: scan_kernel.py), "chunked" (pure PyTorch, any device, with gradients: the sequence cut into chunks of
CHUNK_LENGTH steps, below), "mambapy" (mambapy's parallel scan, pure PyTorch), "sequential" (a plain loop over
time: the reference the tests compare with). "auto", while torch.export traces: chunked, the form that exports;
otherwise mamba_ssm on CUDA tensors when it is installed, numba on CPU tensors when it is installed, else
chunked, the fastest pure-PyTorch form forward and backward here (docs/sccosf.md, `bench --scan`).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .scan_kernel import numba_available, numba_scan

SCAN_BACKENDS = ("auto", "mamba_ssm", "numba", "chunked", "mambapy", "sequential")
SCAN_ORDERS = ("vmamba", "paper")
# T of the chunked scan: steps per chunk (docs/sccosf.md gives the timings it was chosen by).
CHUNK_LENGTH = 32
# Elements of one (batch, L, channels, N) tensor mambapy and the sequential loop build at a time: the scan is
# independent per channel, so long sequences are scanned a few channels at a time to bound memory. (The
# chunked scan builds nothing of length L x N without gradients: its steps hold batch x L/T x D x N.)
_CHUNK_ELEMENTS = 1 << 26

MAMBA_SSM_MISSING = (
    "scan_backend 'mamba_ssm' was asked for but mamba_ssm is not installed. It is an optional GPU extra: "
    "build it against the installed torch with nvcc on the PATH, `pip install mamba-ssm --no-build-isolation` "
    "(with MAMBA_FORCE_BUILD=TRUE where GitHub release downloads are blocked), or use `scan_backend: auto` "
    "(the chunked scan, pure PyTorch)"
)


@lru_cache(maxsize=1)
def mamba_ssm_scan():
    """mamba_ssm's fused kernel, or None when the package (or its compiled extension) is missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:  # the module imports its CUDA extension unguarded
        return None
    return selective_scan_fn


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; available: {', '.join(SCAN_BACKENDS)}")
    if backend == "auto":
        if torch.compiler.is_exporting():
            return "chunked"
        if device.type == "cuda" and mamba_ssm_scan() is not None:
            return "mamba_ssm"
        if device.type == "cpu" and numba_available():
            return "numba"
        return "chunked"
    if backend == "mamba_ssm":
        if mamba_ssm_scan() is None:
            raise RuntimeError(MAMBA_SSM_MISSING)
        if device.type != "cuda":
            raise RuntimeError(f"scan_backend 'mamba_ssm' runs on CUDA tensors only, got {device}; use 'auto' or 'chunked'")
    return backend


def _per_channel(matrix: torch.Tensor, channels: int) -> torch.Tensor:
    """B or C (batch x N x L, or batch x G x N x L) -> batch x L x (1 or channels) x N."""
    if matrix.dim() == 3:
        return matrix.transpose(1, 2).unsqueeze(2)
    batch, groups, state, length = matrix.shape
    expanded = matrix.unsqueeze(2).expand(batch, groups, channels // groups, state, length)
    return expanded.reshape(batch, channels, state, length).permute(0, 3, 1, 2)


def _scan_torch(u, delta, A, B, C, D, parallel: bool) -> torch.Tensor:
    """The recurrence in PyTorch (delta already biased and softplus'd); batch x D x L -> batch x D x L."""
    dt = delta.transpose(1, 2).unsqueeze(-1)  # b, L, D, 1
    decay = torch.exp(dt * A)  # b, L, D, N
    drive = dt * _per_channel(B, u.shape[1]) * u.transpose(1, 2).unsqueeze(-1)
    if parallel:
        from mambapy.pscan import pscan

        states = pscan(decay, drive)
    else:
        h = torch.zeros_like(drive[:, 0])
        steps = []
        for t in range(drive.shape[1]):
            h = decay[:, t] * h + drive[:, t]
            steps.append(h)
        states = torch.stack(steps, dim=1)
    y = (states * _per_channel(C, u.shape[1])).sum(-1).transpose(1, 2)
    return y + D.view(1, -1, 1) * u if D is not None else y


def _loop(step, state, xs: tuple):
    """state, ys = step(state, x) over the leading dimension of xs, ys stacked (None when step gives none).
    A Python loop in eager mode; torch's scan operator while torch.export traces, so that the exported graph
    holds one loop node (an ONNX Scan) whose length follows the input instead of the traced length unrolled."""
    if torch.compiler.is_exporting():
        from torch._higher_order_ops.scan import scan

        state, ys = scan(lambda carry, x: _step_or_empty(step, carry, x), state, xs)
        return state, ys if isinstance(ys, torch.Tensor) else None
    ys = []
    for x in zip(*(t.unbind(0) for t in xs)):
        state, y = step(state, x)
        ys.append(y)
    return state, None if ys[0] is None else torch.stack(ys)


def _step_or_empty(step, carry, x):
    carry, y = step(carry, x)
    return carry, () if y is None else y


def _scan_chunks(u, delta, A, B, C, D, chunk_length: int) -> torch.Tensor:
    """The recurrence in chunks of T = chunk_length steps (delta already biased and softplus'd), two levels:
    1. inside every chunk at once, T vectorised steps from a zero state give each chunk's own end state and
       its own outputs C_t h_t;
    2. the states entering the chunks: L/T steps of h_c = exp(sum of delta A over chunk c-1) h_{c-1} + that
       chunk's own end state;
    3. T vectorised steps add the entering state's share of each output, C_t exp(S_t A) h_enter, with S_t the
       sum of delta from the chunk's start through t (the recurrence is linear in the state).
    Every exponent is delta A (one step) or a sum of it inside a chunk, never positive, so nothing overflows; each
    step holds batch x L/T x D x N, so nothing of length L x N is built (without gradients). A per channel
    and per state (S6) keeps the decay inside the sum over states, so C.B does not factor out as in Mamba-2's
    SSD; the quadratic in-chunk form measured slower (docs/sccosf.md)."""
    batch, channels, length = u.shape
    B, C = (m if m.dim() == 4 else m.unsqueeze(1) for m in (B, C))
    groups, state_size = B.shape[1], A.shape[1]
    chunks = (length + chunk_length - 1) // chunk_length
    padded = chunks * chunk_length  # padding: delta 0 (decay 1) and input 0, after the last real step

    def by_step(x):  # batch x c x L -> T x batch x chunks x c: step t of every chunk together
        # two transposes that each move one axis (ONNX Runtime copies those fast; its general 5-D transpose
        # took 70 ms on a tensor that these two move in 4 ms)
        x = F.pad(x, (0, padded - length)).transpose(1, 2).reshape(batch, chunks, chunk_length, x.shape[1])
        return x.permute(2, 0, 1, 3).contiguous()

    def grouped(x):  # T x batch x chunks x (G c) -> T x batch x chunks x G x c
        return x.view(*x.shape[:3], groups, -1)

    dt = grouped(by_step(delta))
    dtu = grouped(by_step(delta * u))
    B, C = (grouped(by_step(m.reshape(batch, groups * state_size, length))) for m in (B, C))
    # the state laid out N x d (channels innermost): every broadcast below then repeats a row of d values or a
    # scalar along d, which ONNX Runtime runs as long vector loops (with N innermost its Mul ran 16 values a call)
    A = A.view(groups, channels // groups, state_size).transpose(1, 2)

    def advance(h, dt_t, dtu_t, b_t):  # h: batch x chunks x G x N x d
        return torch.addcmul(dtu_t.unsqueeze(-2) * b_t.unsqueeze(-1), torch.exp(dt_t.unsqueeze(-2) * A), h)

    def own_step(h, x):  # every chunk from a zero state: its state and its own share of the outputs
        h = advance(h, *x[:3])
        return h, x[3].unsqueeze(-2) @ h  # batch x chunks x G x 1 x d

    state_shape = (batch, groups, state_size, channels // groups)
    chunk_ends, own = _loop(own_step, u.new_zeros(batch, chunks, *state_shape[1:]), (dt, dtu, B, C))
    chunk_decay = torch.exp(dt.sum(0).unsqueeze(-2) * A)

    def enter(h, x):  # h: the state entering chunk c; x: chunk c's decay and own end state
        decay, own_end = x
        return decay * h + own_end, h.clone()  # torch's scan operator refuses an output that aliases its input

    _, entering = _loop(enter, u.new_zeros(state_shape), (chunk_decay.transpose(0, 1), chunk_ends.transpose(0, 1)))
    entering = entering.transpose(0, 1)
    # the entering state's share of step t's output, C_t exp(S_t A) h_enter, S_t = delta summed from the chunk's
    # start through t: no recurrence left, so fewer operations a step than stepping the whole state again
    decayed = torch.cumsum(dt, 0)

    def entering_share(unused, x):  # (torch's scan operator needs a carry: one number, passed on)
        s_t, c_t = x
        return unused.clone(), c_t.unsqueeze(-2) @ (torch.exp(s_t.unsqueeze(-2) * A) * entering)

    _, carried = _loop(entering_share, u.new_zeros(1), (decayed, C))
    ys = own + carried
    steps = ys.reshape(chunk_length, batch, chunks, channels).permute(1, 2, 0, 3)  # again one axis each
    y = steps.reshape(batch, padded, channels)[:, :length].transpose(1, 2)
    return y + D.view(1, -1, 1) * u if D is not None else y


def _channel_slices(channels: int, groups: int, elements_per_channel: int):
    """Channel ranges that stay inside one group of B/C and under _CHUNK_ELEMENTS."""
    per_group = channels // groups
    step = max(1, min(per_group, _CHUNK_ELEMENTS // max(1, elements_per_channel)))
    for group in range(groups):
        for start in range(group * per_group, (group + 1) * per_group, step):
            yield group, slice(start, min(start + step, (group + 1) * per_group))


def _scan_chunked(u, delta, A, B, C, D, parallel: bool) -> torch.Tensor:
    batch, channels, length = u.shape
    grouped = B.dim() == 4
    groups = B.shape[1] if grouped else 1
    padded = 2 ** math.ceil(math.log2(max(length, 1))) if parallel else length  # pscan pads to a power of 2
    slices = list(_channel_slices(channels, groups, batch * padded * A.shape[1]))
    if len(slices) == 1:
        return _scan_torch(u, delta, A, B, C, D, parallel)
    outputs = []
    for group, part in slices:
        b = B[:, group] if grouped else B
        c = C[:, group] if grouped else C
        d = D[part] if D is not None else None
        outputs.append(_scan_torch(u[:, part], delta[:, part], A[part], b, c, d, parallel))
    return torch.cat(outputs, dim=1)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus; while torch.export traces, written as max(x, 0) + log(1 + exp(-|x|)) (the same values to 1e-6):
    ONNX Runtime runs those seven vectorised operators 3.4x faster than its Softplus and the Where that
    torch's threshold adds (34 -> 10 ms on one scan's delta at L = 19200), eager PyTorch 4x slower."""
    if torch.compiler.is_exporting():
        return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))
    return F.softplus(x)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto") -> torch.Tensor:
    """y = the selective scan of u (batch x D x L) with the layout of the module docstring."""
    backend = resolve_backend(backend, u.device)
    if backend == "mamba_ssm":
        return mamba_ssm_scan()(
            u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
            D=None if D is None else D.float(), delta_bias=None if delta_bias is None else delta_bias.float(),
            delta_softplus=delta_softplus,
        )
    dtype = u.dtype  # the recurrence runs in fp32 (as mamba_ssm's kernel), also under autocast
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float().view(1, -1, 1)
    if delta_softplus:
        delta = _softplus(delta)
    D = None if D is None else D.float()
    if backend == "numba":
        B, C = (m.unsqueeze(1) if m.dim() == 3 else m for m in (B, C))
        y = numba_scan(u, delta, A, B.transpose(2, 3).contiguous(), C.transpose(2, 3).contiguous())
        return (y + D.view(1, -1, 1) * u if D is not None else y).to(dtype)
    if backend == "chunked":
        return _scan_chunks(u, delta, A, B, C, D, CHUNK_LENGTH).to(dtype)
    return _scan_chunked(u, delta, A, B, C, D, parallel=backend == "mambapy").to(dtype)


class SSMParameters(nn.Module):
    """The input-dependent Delta, B, C (x_proj, dt_proj) and the learnt A, D of `groups` independent S6 scans
    over `d_inner` channels each (Mamba's initialisation: S4D-real A, dt log-uniform in [dt_min, dt_max])."""

    def __init__(self, d_inner: int, d_state: int = 16, dt_rank: int | None = None, groups: int = 1,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        super().__init__()
        self.d_state, self.groups = d_state, groups
        self.dt_rank = dt_rank or math.ceil(d_inner / 16)
        self.x_proj = nn.Parameter(torch.empty(groups, self.dt_rank + 2 * d_state, d_inner))
        nn.init.uniform_(self.x_proj, -d_inner ** -0.5, d_inner ** -0.5)  # nn.Linear's default
        self.dt_proj = nn.Parameter(torch.empty(groups, d_inner, self.dt_rank))
        nn.init.uniform_(self.dt_proj, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(groups, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(groups * d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(groups * d_inner))

    def project(self, xs: torch.Tensor):
        """xs: batch x G x d x L -> delta (batch x G*d x L, before bias and softplus), B, C (batch x G x N x L)."""
        # matrix products over the group dimension (not einsum: ONNX Runtime's Einsum ran these 10-20x slower
        # than its MatMul, 0.8 s of SC-CoSF's 480x640 frame)
        x_dbl = self.x_proj @ xs  # G x c x d @ batch x G x d x L
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = (self.dt_proj @ dt).flatten(1, 2)
        return delta, B.contiguous(), C.contiguous()

    def scan(self, xs: torch.Tensor, delta, B, C, backend: str) -> torch.Tensor:
        """The scans of xs (batch x G x d x L) with this module's A, D and bias, and the given B, C."""
        return joint_scan([(self, xs, delta, B, C)], backend)[0]


def joint_scan(scans, backend: str) -> list[torch.Tensor]:
    """Independent scans [(SSMParameters, xs, delta, B, C), ...] of one width d and one length L (xs: batch x
    G_i x d x L, as SSMParameters.scan) as one selective_scan: their channels side by side, each one's B and C
    its own groups. One kernel call or one set of chunk loops instead of one per scan, and in an exported graph
    one set of ONNX Scans (the exporter's time and the graph grow with their number)."""
    A = torch.cat([-torch.exp(params.A_log.float()) for params, *_ in scans])
    D = torch.cat([params.D for params, *_ in scans])
    bias = torch.cat([params.dt_bias.flatten() for params, *_ in scans])
    u = torch.cat([xs.flatten(1, 2) for _, xs, *_ in scans], dim=1)
    delta, B, C = (torch.cat([scan[i] for scan in scans], dim=1) for i in (2, 3, 4))
    y = selective_scan(u, delta, A, B, C, D, bias, True, backend)
    widths = [xs.shape[1] * xs.shape[2] for _, xs, *_ in scans]
    return [part.view_as(xs) for part, (_, xs, *_) in zip(y.split(widths, dim=1), scans)]


class S6(nn.Module):
    """One selective scan over a sequence: batch x d_inner x L -> the same (Mamba's SSM with its D skip)."""

    def __init__(self, d_inner: int, d_state: int = 16, backend: str = "auto"):
        super().__init__()
        self.backend = backend
        self.ssm = SSMParameters(d_inner, d_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scan_side_by_side([(self, x)])[0]


def scan_side_by_side(pairs) -> list[torch.Tensor]:
    """[S6(x) for S6, x in pairs] as one joint_scan (S6 modules of one width and backend, inputs of one length)."""
    scans = []
    for s6, x in pairs:
        xs = x.unsqueeze(1)
        scans.append((s6.ssm, xs, *s6.ssm.project(xs)))
    return [y.squeeze(1) for y in joint_scan(scans, pairs[0][0].backend)]


class CrossS6(nn.Module):
    """Cross S6 (SC-CoSF §3.2.1): each stream its own A, B, Delta, D; the outputs read the other stream's C:
    y1 = C2 h1 + D1 x1, y2 = C1 h2 + D2 x2."""

    def __init__(self, d_inner: int, d_state: int = 16, backend: str = "auto"):
        super().__init__()
        self.backend = backend
        self.ssm1 = SSMParameters(d_inner, d_state)
        self.ssm2 = SSMParameters(d_inner, d_state)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs1, xs2 = x1.unsqueeze(1), x2.unsqueeze(1)
        delta1, B1, C1 = self.ssm1.project(xs1)
        delta2, B2, C2 = self.ssm2.project(xs2)
        y1, y2 = joint_scan([(self.ssm1, xs1, delta1, B1, C2), (self.ssm2, xs2, delta2, B2, C1)], self.backend)
        return y1.squeeze(1), y2.squeeze(1)


def scan_orders(height: int, width: int, order: str = "vmamba") -> torch.Tensor:
    """4 x (H*W) indices into the row-major flattened map, one traversal per row.

    vmamba (VMamba's CrossScan): row-major, column-major, and both reversed.
    paper (SC-CoSF §3.2.2): top-left -> bottom-right and back (row-major and reversed), top-right ->
    bottom-left and back (rows right to left, and that reversed)."""
    grid = torch.arange(height * width).view(height, width)
    if order == "vmamba":
        forward = [grid.flatten(), grid.t().flatten()]
    elif order == "paper":
        forward = [grid.flatten(), grid.flip(1).flatten()]
    else:
        raise ValueError(f"unknown scan_order {order!r}; available: {', '.join(SCAN_ORDERS)}")
    return torch.stack([forward[0], forward[1], forward[0].flip(0), forward[1].flip(0)])


def cross_scan(x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """batch x d x H x W -> batch x 4 x d x L: the map unfolded along each traversal."""
    flat = x.flatten(2)
    unfolded = flat.index_select(2, orders.flatten())  # one gather (iterating `orders` would unbind it)
    return unfolded.view(*flat.shape[:2], *orders.shape).transpose(1, 2)


def cross_merge(ys: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """batch x 4 x d x L -> batch x d x L (row-major): each sequence put back in place, summed."""
    merged = torch.zeros_like(ys[:, 0])
    orders = orders.to(ys.device)
    for k in range(orders.shape[0]):
        merged = merged.index_add(2, orders[k], ys[:, k])
    return merged


class SS2D(nn.Module):
    """Selective Scan 2D (VMamba): the map unfolded along four traversals, an independent S6 per traversal,
    the outputs re-ordered and summed. batch x d x H x W -> the same."""

    def __init__(self, d_inner: int, d_state: int = 16, scan_order: str = "vmamba", backend: str = "auto"):
        super().__init__()
        scan_orders(1, 1, scan_order)  # validates the name
        self.scan_order, self.backend = scan_order, backend
        self.ssm = SSMParameters(d_inner, d_state, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orders = scan_orders(*x.shape[-2:], self.scan_order).to(x.device)
        xs = cross_scan(x, orders)
        delta, B, C = self.ssm.project(xs)
        ys = self.ssm.scan(xs, delta, B, C, self.backend)
        return cross_merge(ys, orders).view_as(x)


class ChannelAttention(nn.Module):
    """CBAM's channel attention: a shared MLP on the average- and max-pooled maps, sigmoid, multiply."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(weight)


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: mean and max over channels, a 7x7 convolution, sigmoid, multiply."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (per sample)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1.0 - self.rate)
        return x * keep / (1.0 - self.rate)


class ICRVSSBlock(nn.Module):
    """Interactive Context Restoration VSS block (SC-CoSF §3.2.2), on batch x C x H x W:
    Y1 = LN(SS2D(SiLU(DWConv(Linear(Y))))); Y2 = sigmoid(Theta_C(Theta_S(z))) in place of VSSB's SiLU(z) gate,
    z = Linear(Y) (VMamba's in_proj gives both); out = Y + DropPath(Linear(Y1 * Y2)), with VSSB's pre-LN."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, scan_order: str = "vmamba",
                 backend: str = "auto", drop_path: float = 0.0):
        super().__init__()
        inner = int(expand * dim)
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.dwconv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)  # VMamba's d_conv 3
        self.ss2d = SS2D(inner, d_state, scan_order, backend)
        self.out_norm = nn.LayerNorm(inner)
        self.spatial = SpatialAttention()
        self.channel = ChannelAttention(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x.permute(0, 2, 3, 1))
        a, z = self.in_proj(y).permute(0, 3, 1, 2).chunk(2, dim=1)
        y1 = self.ss2d(F.silu(self.dwconv(a)))
        y1 = self.out_norm(y1.permute(0, 2, 3, 1))
        y2 = torch.sigmoid(self.channel(self.spatial(z))).permute(0, 2, 3, 1)
        out = self.out_proj(y1 * y2).permute(0, 3, 1, 2)
        return x + self.drop_path(out)
