"""Block Gibbs sampling of torus Ising graphs as stencils on packed half-grids.

Spins are ±1 and P(s_i = +1 | rest) = sigmoid(2 β h_i) with h_i = b_i + Σ_j J_ij s_j. With the
chessboard colouring (see :mod:`genflow.ising.graph`) all sites of one colour are
conditionally independent given the other, so a sweep updates colour 0, then colour 1.

Layout: a colour's spins are a (2, H, H, B) tensor — its two sub-lattices, H = SIDE / 2, batch
last. A colour's field is a stencil over the other colour,

    h[q] = b[q] + Σ_o W[q, o] ⊙ roll(s_other[source(q, o)], shift(q, o)),

where each coupling weight is loaded once and applied to B contiguous chains, and no work is spent
on the colour that is not updated. The random draw is fused with the update: s = +1 where
u (1 + exp(-2 β h)) < 1, which is u < sigmoid(2 β h) without a division, with u (16 bits) from a
counter-based Philox-4x32-10 generator written in tensor operations (key = a per-run seed, counter = (site, call)),
so the same code runs eager or compiled, on CPU or GPU, and a run is reproducible from its seed.

With ``compile=True`` a sweep (both colours) is one torch.compile call, each colour's update one loop
over sites that computes the field, the random numbers and the new spins together (the fast path;
each new batch size costs some seconds of compilation). Profiling on a 2-core AVX-512 CPU (80_12,
batch 64): the stencil alone runs at ~1 G spin updates/s compiled, torch.rand costs 3.4 ns per number
and inductor's own rand 5.6 ns (the draw was 85 % of the time), the tensor-op Philox 0.6 ns. On an
AVX2-only CPU the compiled Philox works on int32 words (no vector 64-bit multiply there), and at
batch 1 a compiled call's own overhead (~90 us) is as long as its kernels: hence one call per sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genflow.threads import ThreadBudget
from genflow.ising.graph import TorusGraph

__all__ = ["BlockGibbsSampler", "SpinState", "MomentSums", "SamplingSchedule", "philox4x32", "philox_uniform"]

_MASK32 = 0xFFFFFFFF
_LOW16 = 0xFFFF


def _int32(word: int) -> int:
    """A 32-bit word as the int32 with the same bits."""
    word &= _MASK32
    return word - (1 << 32) if word >= 1 << 31 else word


def _mulhilo32(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low words of the 64-bit product of the words `a` (int32 bits) and a 32-bit constant,
    with 32-bit multiplies only: the 16-bit halves' products wrap in int32 with the right bits, and
    right shifts are masked to be logical."""
    m_high, m_low = multiplier >> 16, multiplier & _LOW16
    a_high, a_low = (a >> 16) & _LOW16, a & _LOW16
    low_low, low_high, high_low = a_low * m_low, a_low * m_high, a_high * m_low
    carry = (((low_low >> 16) & _LOW16) + (low_high & _LOW16) + (high_low & _LOW16)) >> 16
    high = a_high * m_high + ((low_high >> 16) & _LOW16) + ((high_low >> 16) & _LOW16) + carry
    return high, a * _int32(multiplier)


def _mulhilo64(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same on int64 tensors of words: one multiply (the product's bits fit an int64, wrapping past
    2^63 keeps them)."""
    product = a * multiplier
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x32(counter0: torch.Tensor, counter1: torch.Tensor, key0: torch.Tensor, key1: torch.Tensor,
               rounds: int = 10, words32: bool = False) -> tuple[torch.Tensor, ...]:
    """Philox-4x32 (Salmon et al. 2011) on tensors of 32-bit words; counter words 2, 3 = 0.

    Words are int64 tensors (values 0 .. 2^32 - 1), or with `words32` int32 tensors holding the same
    bits. Both give the same words; which is faster depends on how it runs. Eager, each tensor op costs
    a dispatch and the int64 form has a third of the ops. Compiled, inductor fuses everything into one
    loop and the instructions count: x86 has no vector 64-bit multiply below AVX-512 (torch emulates
    it element by element), while 32-bit lanes multiply natively and twice as many fit a register
    (5.7 -> 2.8 ns per number compiled on an AVX2-only AMD EPYC, see the README).
    """
    mulhilo, add = (_mulhilo32, _int32) if words32 else (_mulhilo64, lambda x: x)
    mask = (lambda x: x) if words32 else (lambda x: x & _MASK32)
    c0, c1 = counter0, counter1 + torch.zeros_like(counter0)
    c2 = torch.zeros_like(counter0)
    c3 = torch.zeros_like(counter0)
    k0, k1 = key0, key1
    for _ in range(rounds):
        high0, low0 = mulhilo(c0, 0xD2511F53)
        high1, low1 = mulhilo(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
        k0 = mask(k0 + add(0x9E3779B9))
        k1 = mask(k1 + add(0xBB67AE85))
    return c0, c1, c2, c3


def philox_uniform(shape: tuple[int, ...], key: torch.Tensor, call: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Uniform (0, 1) float32 of `shape` from Philox with key (key[0], key[1]) and counter (block, call):
    each 32-bit word gives two numbers of 16 bits, (k + ½) / 2^16, so one Philox block makes 8; the same
    numbers eager and compiled (int32 words when compiled, see `philox4x32`).

    16 bits are plenty for a Gibbs update, u < P(s = +1): the probability it realises is off by less
    than 2^-16 (1.5e-5), far below the sampling noise of any moment a chain estimates, and it halves the
    cost of the draw, which is about half of a compiled sweep."""
    n = 1
    for d in shape:
        n *= d
    words32 = torch.compiler.is_compiling()
    dtype = torch.int32 if words32 else torch.int64
    as_words = (lambda x: (x & _MASK32).to(torch.int32)) if words32 else (lambda x: x)
    key = as_words(key)
    counter = torch.arange((n + 7) // 8, dtype=dtype, device=device)
    words = torch.cat(philox4x32(counter, as_words(call), key[0], key[1], words32=words32))
    halves = torch.cat([words & _LOW16, (words >> 16) & _LOW16])
    return ((halves[:n].to(torch.float32) + 0.5) * (1.0 / 65536.0)).view(shape)


@dataclass
class SpinState:
    """Packed spins: colour halves (2, H, H, B) with values ±1 (float32)."""

    colour0: torch.Tensor
    colour1: torch.Tensor

    @property
    def batch(self) -> int:
        return self.colour0.shape[-1]


@dataclass(frozen=True)
class SamplingSchedule:
    """`warmup` sweeps, then `n_samples` samples taken every `steps_per_sample` sweeps (the first at
    the end of the warm-up), as THRML's schedule: warmup + (n_samples - 1) x steps_per_sample sweeps."""

    warmup: int
    n_samples: int
    steps_per_sample: int

    @property
    def sweeps(self) -> int:
        return self.warmup + (self.n_samples - 1) * self.steps_per_sample


@dataclass
class MomentSums:
    """Running sums over samples of batch-mean spins and colour-0 edge correlations."""

    mean0: torch.Tensor  # (2, H, H): Σ_samples mean_b s (colour 0)
    mean1: torch.Tensor  # (2, H, H)
    corr: torch.Tensor  # (2, D, H, H): Σ_samples mean_b s_i s_j, edges stored at colour-0 sites
    count: int = 0

    def averages(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = max(self.count, 1)
        return self.mean0 / n, self.mean1 / n, self.corr / n


class BlockGibbsSampler:
    """Stencil block Gibbs sampler for one :class:`TorusGraph` (see the module docstring).

    Weights are the (2, D, H, H) colour-0 coupling storage of the graph and the matching colour-1
    view (`TorusGraph.colour_one_weights`); biases are (2, H, H) or per chain (2, H, H, B).
    """

    def __init__(self, graph: TorusGraph, compile: bool = False, threads: ThreadBudget | None = None):
        self.graph = graph
        self.half = graph.half
        self.compiled = compile
        self.threads = threads  # re-decided before each run: the cores other processes leave free
        self._eager = {"sweep": self._make_sweep(), "correlate": self._edge_correlation}
        self._fns = dict(self._eager)
        if compile:
            # one compiled sweep per batch size: training, validation, generation and diagnostics use
            # different batches, more than dynamo's default of 8 variants
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            # kernels read the thread count when they run, not when they are compiled (ThreadBudget changes it)
            options = {"cpp.dynamic_threads": True}
            self._fns = {name: torch.compile(fn, dynamic=False, options=options) for name, fn in self._eager.items()}

    # --- the field and the update --------------------------------------------------------------------
    def _stencil_field(self, colour: int, other: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        fields = []
        for q, terms in enumerate(self.graph.stencil[colour]):
            h = bias[q]
            for o, t in enumerate(terms):
                h = h + weights[q, o] * torch.roll(other[t.source], shifts=(-t.di, -t.dj), dims=(0, 1))
            fields.append(h)
        return torch.stack(fields)

    def field(self, colour: int, other: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """h (2, H, H, B) of colour `colour` given the other colour's spins (2, H, H, B)."""
        return self._stencil_field(colour, other, weights.unsqueeze(-1), _per_chain(bias)).expand_as(other)

    def conditional_probability(self, colour: int, other: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor,
                                beta: float = 1.0) -> torch.Tensor:
        """P(s = +1 | other colour) for every site of `colour`: sigmoid(2 β h)."""
        return torch.sigmoid(2.0 * beta * self.field(colour, other, weights, bias))

    def _update(self, colour: int, current: torch.Tensor, other: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor,
                beta: torch.Tensor, free: torch.Tensor, key: torch.Tensor, call: torch.Tensor) -> torch.Tensor:
        h = self._stencil_field(colour, other, weights, bias).expand_as(current)
        u = philox_uniform(tuple(h.shape), key, call, device=h.device)
        new = torch.where(u * (1.0 + torch.exp(-2.0 * beta * h)) < 1.0, 1.0, -1.0)
        return torch.where(free, new, current)

    def _make_sweep(self):
        # both colours in one call: at small batches a compiled call's own overhead (guards, wrappers,
        # ~90 us here) is as long as its kernels, so one call per sweep instead of two
        def sweep(s0: torch.Tensor, s1: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, b0: torch.Tensor,
                  b1: torch.Tensor, beta: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, key: torch.Tensor,
                  call: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s0 = self._update(0, s0, s1, w0, b0, beta, f0, key, call)
            return s0, self._update(1, s1, s0, w1, b1, beta, f1, key, call + 1)

        return sweep

    # --- running chains -------------------------------------------------------------------------------
    def chains(self, batch: int, biases: tuple[torch.Tensor, torch.Tensor], beta: float, key: torch.Tensor,
               device: torch.device | None = None) -> SpinState:
        """Chains started independently from their biases ("Hinton init"): P(+1) = sigmoid(2 β b)."""
        out = []
        for colour, bias in enumerate(biases):
            bias = _per_chain(bias).expand(2, self.half, self.half, batch)
            call = torch.tensor(_MASK32 - colour, dtype=torch.int64, device=device)  # sweeps use calls 0, 1, 2, ...
            u = philox_uniform(tuple(bias.shape), key, call, device=device)
            out.append(torch.where(u < torch.sigmoid(2.0 * beta * bias), 1.0, -1.0))
        return SpinState(*out)

    def run(self, state: SpinState, weights: tuple[torch.Tensor, torch.Tensor], biases: tuple[torch.Tensor, torch.Tensor],
            schedule: SamplingSchedule, key: torch.Tensor, beta: float | list[float] = 1.0,
            free: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None), collect: bool = True) -> MomentSums | None:
        """Run `schedule` on `state` in place and return the moment sums of its samples.

        `beta` is a constant or one value per sweep (annealing). `free[colour]` (2, H, H) bool marks
        the sites that are sampled; the others keep their (clamped) values. `key` (2,) int64 holds two
        32-bit words that seed the draws: one key per run, never reused.
        """
        device = state.colour0.device
        if self.threads is not None and device.type == "cpu":
            self.threads.update()
        w = (weights[0].unsqueeze(-1), weights[1].unsqueeze(-1))
        b = (_per_chain(biases[0]), _per_chain(biases[1]))
        all_free = torch.ones(2, self.half, self.half, 1, dtype=torch.bool, device=device)
        f = tuple(all_free if m is None else m.unsqueeze(-1) for m in free)  # always a mask: one kernel per colour
        betas = [float(beta)] * schedule.sweeps if isinstance(beta, (int, float)) else [float(x) for x in beta]
        if len(betas) != schedule.sweeps:
            raise ValueError(f"{len(betas)} beta values for a schedule of {schedule.sweeps} sweeps")
        beta_t = torch.tensor(betas, dtype=torch.float32, device=device)
        moments = self.new_moments(device) if collect else None
        sample_at = {schedule.warmup + i * schedule.steps_per_sample for i in range(schedule.n_samples)}
        if collect and 0 in sample_at:
            self.accumulate(moments, state)
        calls = torch.arange(0, 2 * schedule.sweeps, 2, dtype=torch.int64, device=device)  # colour 0: 2 x sweep, colour 1: + 1
        for sweep in range(schedule.sweeps):
            state.colour0, state.colour1 = self._call("sweep", state.colour0, state.colour1, w[0], w[1], b[0], b[1],
                                                      beta_t[sweep], f[0], f[1], key, calls[sweep])
            if collect and sweep + 1 in sample_at:
                self.accumulate(moments, state)
        return moments

    def _call(self, name: str, *args: torch.Tensor):
        """A sweep or the edge correlations (`name`); if torch.compile cannot build its kernel here (e.g. no
        C++ compiler), say so once and continue with the eager sampler, which draws the same numbers."""
        if not self.compiled:
            return self._fns[name](*args)
        try:
            return self._fns[name](*args)
        except Exception as err:  # noqa: BLE001 - any backend failure: inductor, missing compiler, ...
            import warnings

            warnings.warn(f"torch.compile of the Gibbs sampler failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                          "continuing eager (slower). Set model.compile=false to skip compiling.", RuntimeWarning, stacklevel=2)
            self.compiled = False
            self._fns = dict(self._eager)
            return self._fns[name](*args)

    # --- statistics -----------------------------------------------------------------------------------
    def new_moments(self, device: torch.device | None = None) -> MomentSums:
        H, D = self.half, self.graph.degree
        return MomentSums(torch.zeros(2, H, H, device=device), torch.zeros(2, H, H, device=device),
                          torch.zeros(2, D, H, H, device=device))

    def _edge_correlation(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        rows = []
        for q, terms in enumerate(self.graph.stencil[0]):
            rows.append(torch.stack([(s0[q] * torch.roll(s1[t.source], shifts=(-t.di, -t.dj), dims=(0, 1))).mean(-1)
                                     for t in terms]))
        return torch.stack(rows)

    def edge_correlation(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """mean over the last (batch) axis of s_i s_j for every edge: (2, D, H, H) in storage order."""
        return self._call("correlate", s0, s1)

    def accumulate(self, moments: MomentSums, state: SpinState) -> None:
        """Add this sample's batch-mean spins and edge correlations s_i s_j (i on colour 0)."""
        moments.mean0 += state.colour0.mean(-1)
        moments.mean1 += state.colour1.mean(-1)
        moments.corr += self.edge_correlation(state.colour0, state.colour1)
        moments.count += 1


def _per_chain(bias: torch.Tensor) -> torch.Tensor:
    """(2, H, H) -> (2, H, H, 1); (2, H, H, B) stays."""
    return bias.unsqueeze(-1) if bias.dim() == 3 else bias
