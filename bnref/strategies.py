"""Hypothesis strategies for batch-norm inputs.

Small composable strategies in the manner of ``hypothesis.extra.numpy``. Array
*values* come from a NumPy generator seeded by a drawn integer, while the
structure -- rank, sizes, layout, dtype, conditioning, eps -- is drawn by Hypothesis
and shrinks toward the simplest case (rank 2, small sides, float64, a well-conditioned
batch). Every drawn :class:`BNCase` can be rebuilt exactly with :func:`make_case`,
which is what :meth:`BNCase.replay` prints.

Conditions (:data:`CONDITIONS`):

* ``well`` -- per-channel mean in [-3, 3], std in [0.5, 2];
* ``offset`` -- mean +-10^k (k in [2, 4]) and std 10^-j (j in [0, 2]): kappa up to 1e6, the
  case where ``E[x^2] - E[x]^2`` fails in float32;
* ``tiny_spread`` -- std in [1e-6, 1e-4]: variance far below eps;
* ``eps_scale`` -- variance between eps/10 and 10*eps;
* ``constant`` -- about half the channels hold a single repeated value (var = 0);
* ``minimal`` -- exactly m = 2 values per channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from bnref.axes import Axes, batch_norm_axes, per_channel
from bnref.dtypes import KERNEL_NAMES, dtype_info

__all__ = ["CONDITIONS", "WIDEST_FIRST", "BNCase", "make_case", "dtypes", "channel_axes", "shapes", "epsilons",
           "conditions", "seeds", "gammas", "betas", "bn_cases", "shard_sizes"]

CONDITIONS = ("well", "offset", "tiny_spread", "eps_scale", "constant", "minimal")
#: conditions :func:`make_case` builds but :func:`bn_cases` never draws: name -> (mean, std) of every channel
FIXED_CONDITIONS = {"offset-1e4": (1e4, 1e-2)}

#: the dtypes the kernels take (:data:`bnref.dtypes.KERNEL_NAMES`), widest first: cases shrink toward the
#: most precise
WIDEST_FIRST = tuple(sorted(KERNEL_NAMES, key=lambda name: dtype_info(name).unit_roundoff))


def dtypes(names=WIDEST_FIRST) -> st.SearchStrategy[np.dtype]:
    """The dtypes ``names`` as ``np.dtype`` (default: every one the kernels take); shrinks toward the first.

    Raises:
        TypeError: a name that is not in :data:`bnref.dtypes.DTYPES`.
    """
    return st.sampled_from([dtype_info(n).numpy for n in names])


def channel_axes(axes=(1, -1)) -> st.SearchStrategy[int]:
    """1 (channels-first, PyTorch) or -1 (channels-last, Flax/Keras); shrinks toward 1."""
    return st.sampled_from(list(axes))


def conditions(names=CONDITIONS) -> st.SearchStrategy[str]:
    """One of :data:`CONDITIONS`; shrinks toward ``well``."""
    unknown = set(names) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; expected some of {CONDITIONS}")
    return st.sampled_from(list(names))


def seeds() -> st.SearchStrategy[int]:
    """Seeds for the NumPy generator that fills the arrays."""
    return st.integers(0, 2**32 - 1)


def epsilons() -> st.SearchStrategy[float]:
    """eps: the common defaults (1e-5 PyTorch/Flax, 1e-3 Keras, 2e-5 Chainer) or any value in [1e-6, 0.5]."""
    return st.one_of(st.sampled_from([1e-5, 1e-3, 2e-5, 0.1]), st.floats(1e-6, 0.5))


def gammas(channels: int, dtype="float64", *, min_magnitude: float = 0.0, max_magnitude: float = 10.0):
    """``(channels,)`` scales with |gamma| in [min_magnitude, max_magnitude], either sign; shrinks toward 0."""
    from hypothesis.extra import numpy as hnp

    magnitude = st.floats(min_magnitude, max_magnitude, width=np.dtype(dtype).itemsize * 8)
    return hnp.arrays(np.dtype(dtype), (channels,), elements=st.one_of(magnitude, magnitude.map(lambda v: -v)))


def betas(channels: int, dtype="float64", *, max_magnitude: float = 10.0):
    """``(channels,)`` shifts in [-max_magnitude, max_magnitude]; shrinks toward 0."""
    from hypothesis.extra import numpy as hnp

    return hnp.arrays(np.dtype(dtype), (channels,),
                      elements=st.floats(-max_magnitude, max_magnitude, width=np.dtype(dtype).itemsize * 8))


@st.composite
def shapes(draw, *, min_rank: int = 2, max_rank: int = 5, channel_axis: int = 1, max_side: int = 6,
           max_channels: int = 5, min_count: int = 2, max_size: int = 2048) -> tuple[int, ...]:
    """Shapes of rank ``min_rank..max_rank`` with ``>= min_count`` values per channel.

    The channel axis (``channel_axis``) has 1..``max_channels`` entries, the other axes
    1..``max_side``; the batch axis is enlarged if needed to reach ``min_count``. Shrinks
    toward low rank and small sides.
    """
    if not 2 <= min_rank <= max_rank:
        raise ValueError(f"need 2 <= min_rank <= max_rank, got {min_rank}, {max_rank}")
    rank = draw(st.integers(min_rank, max_rank))
    axis = channel_axis % rank
    dims = [draw(st.integers(1, max_side)) for _ in range(rank)]
    dims[axis] = draw(st.integers(1, max_channels))
    batch_axis = 0 if axis != 0 else 1
    others = int(np.prod([d for i, d in enumerate(dims) if i not in (axis, batch_axis)]))
    dims[batch_axis] = max(dims[batch_axis], -(-min_count // others))
    while int(np.prod(dims)) > max_size and dims[batch_axis] > 1:
        dims[batch_axis] //= 2
    count = int(np.prod(dims)) // dims[axis]
    if count < min_count:  # the other axes alone are too small: grow the batch axis back
        dims[batch_axis] *= -(-min_count // count)
    return tuple(dims)


def _minimal_shape(rank: int, channels: int, channel_axis: int, rng: np.random.Generator) -> tuple[int, ...]:
    """A shape with exactly two values per channel: one non-channel axis is 2, the rest 1."""
    dims = [1] * rank
    dims[channel_axis % rank] = channels
    free = [i for i in range(rank) if i != channel_axis % rank]
    dims[free[int(rng.integers(len(free)))]] = 2
    return tuple(dims)


@dataclass
class BNCase:
    """One batch-norm input: ``x`` (any rank >= 2), ``gamma``/``beta`` (C,), eps and layout."""

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    channel_axis: int
    condition: str
    seed: int
    shape: tuple = field(default=())

    @property
    def channels(self) -> int:
        return self.x.shape[self.channel_axis]

    @property
    def axes(self) -> Axes:
        """The reduced and channel axes of ``x`` (``axes.broadcast(v)`` lines a ``(C,)`` vector up with ``x``)."""
        return batch_norm_axes(self.x.ndim, self.channel_axis)

    @property
    def count(self) -> int:
        """m: values per channel."""
        return self.axes.count(self.x.shape)

    def describe(self) -> str:
        """Shape, dtype, layout, condition and a summary of the values."""
        axes = self.axes.reduce
        x64 = self.x.astype(np.float64)
        mean = x64.mean(axis=axes)
        std = x64.std(axis=axes)
        return (f"shape={self.x.shape} dtype={self.x.dtype} channel_axis={self.channel_axis} m={self.count} "
                f"condition={self.condition} eps={self.eps:.3g}; per-channel mean in "
                f"[{mean.min():.4g}, {mean.max():.4g}], std in [{std.min():.3g}, {std.max():.3g}]; "
                f"gamma in [{self.gamma.min():.3g}, {self.gamma.max():.3g}]")

    def replay(self) -> str:
        """Python that rebuilds this case exactly."""
        return (f"bnref.strategies.make_case({self.shape!r}, {str(self.x.dtype)!r}, {self.channel_axis}, "
                f"{self.condition!r}, seed={self.seed}, eps={self.eps!r})")


def make_case(shape, dtype, channel_axis: int, condition: str, seed: int, eps: float = 1e-5) -> BNCase:
    """Build the case that :func:`bn_cases` draws, deterministically from its parameters.

    For ``condition="minimal"`` the given ``shape`` only fixes the rank and channel count;
    ``condition`` may also be one of :data:`FIXED_CONDITIONS` (a fixed mean and std in every channel).
    """
    if condition not in CONDITIONS and condition not in FIXED_CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS + tuple(FIXED_CONDITIONS)}")
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in shape)
    rank, axis = len(shape), channel_axis % len(shape)
    channels = shape[axis]
    data_shape = _minimal_shape(rank, channels, channel_axis, rng) if condition == "minimal" else shape
    along = lambda v: per_channel(v, rank, axis)  # noqa: E731
    if condition in FIXED_CONDITIONS:
        loc, scale = (np.full(channels, v) for v in FIXED_CONDITIONS[condition])
    elif condition == "offset":
        sign = rng.choice([-1.0, 1.0], size=channels)
        loc = sign * 10.0 ** rng.uniform(2, 4, size=channels)
        scale = 10.0 ** -rng.uniform(0, 2, size=channels)
    elif condition == "tiny_spread":
        loc, scale = rng.uniform(-1, 1, channels), 10.0 ** rng.uniform(-6, -4, channels)
    elif condition == "eps_scale":
        loc, scale = rng.uniform(-1, 1, channels), np.sqrt(eps * 10.0 ** rng.uniform(-1, 1, channels))
    else:
        loc, scale = rng.uniform(-3, 3, channels), rng.uniform(0.5, 2, channels)
    x = along(loc) + along(scale) * rng.standard_normal(data_shape)
    if condition == "constant":
        constant = rng.random(channels) < 0.5
        constant[int(rng.integers(channels))] = True
        x = np.where(along(constant), along(loc), x)
    x = np.ascontiguousarray(x.astype(dtype))
    gamma = rng.uniform(0.5, 2, channels) * rng.choice([-1.0, 1.0], channels)
    beta = rng.uniform(-1, 1, channels)
    return BNCase(x, gamma.astype(dtype), beta.astype(dtype), float(eps), channel_axis, condition, seed, shape)


_strategy = {"dtypes": dtypes, "channel_axes": channel_axes, "conditions": conditions}


@st.composite
def bn_cases(draw, *, dtypes=WIDEST_FIRST, channel_axes=(1, -1), conditions=CONDITIONS,
             min_rank: int = 2, max_rank: int = 5, max_side: int = 6, max_channels: int = 5,
             max_size: int = 2048) -> BNCase:
    """A :class:`BNCase`: shape, dtype, layout, condition, eps and values (see the module docstring)."""
    # the parameters shadow the strategy functions of the same name: reach those through _strategy
    dtype = draw(_strategy["dtypes"](dtypes))
    axis = draw(_strategy["channel_axes"](channel_axes))
    condition = draw(_strategy["conditions"](conditions))
    shape = draw(shapes(min_rank=min_rank, max_rank=max_rank, channel_axis=axis, max_side=max_side,
                        max_channels=max_channels, max_size=max_size))
    eps = draw(epsilons())
    seed = draw(seeds())
    return make_case(shape, dtype, axis, condition, seed, eps)


@st.composite
def shard_sizes(draw, total: int, *, max_shards: int = 6) -> tuple[int, ...]:
    """Sizes of 1..``max_shards`` shards that add up to ``total``: uneven, with shards of 1 and 0.

    Cut points are drawn in ``[0, total]`` (repeats make empty shards); shrinks toward a
    single shard. ``np.split(x, np.cumsum(sizes)[:-1])`` cuts an array accordingly.
    """
    if total < 0 or max_shards < 1:
        raise ValueError(f"need total >= 0 and max_shards >= 1; got total={total}, max_shards={max_shards}")
    count = draw(st.integers(1, max_shards), label="number of shards")
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=count - 1, max_size=count - 1), label="cuts"))
    edges = [0, *cuts, total]
    return tuple(b - a for a, b in zip(edges, edges[1:]))
