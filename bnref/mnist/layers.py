r"""NumPy layers with hand-written backward; :class:`BatchNorm` runs on bnref's kernels.

Every layer maps a batch ``x`` of shape ``(N, features)`` to ``y``:

- ``forward(x, training)`` computes ``y`` and keeps what ``backward`` needs;
- ``backward(dy)`` returns ``dx`` and stores the parameter gradients in ``layer.grads``
  (same order as ``layer.params``).

Outputs are written into per-layer buffers that are reused from one batch to the next (no
allocation per step at a fixed batch size): an output is valid until the layer's next ``forward``,
which is all a feed-forward pass needs. Arrays passed in are never modified.
"""
from __future__ import annotations

import numpy as np

import bnref

__all__ = ["Layer", "Linear", "BatchNorm", "Tanh", "Sigmoid", "Dropout", "LogSoftmaxNLL", "Network", "INITS"]


def _glorot_uniform(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def _glorot_normal(rng, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


def _lecun_uniform(rng, fan_in, fan_out):
    # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    limit = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def _he_normal(rng, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def _normal(rng, fan_in, fan_out):
    # N(0, 1): large enough to saturate sigmoids, the regime of the paper's Fig. 1 without BN
    return rng.normal(0.0, 1.0, size=(fan_in, fan_out))


def _small_normal(rng, fan_in, fan_out):
    # N(0, 0.01^2): the classic "small random weights", under which deep tanh nets barely learn
    return rng.normal(0.0, 0.01, size=(fan_in, fan_out))


#: weight initializers, ``(rng, fan_in, fan_out) -> (fan_in, fan_out)`` float64
INITS = {
    "glorot": _glorot_uniform,
    "glorot-normal": _glorot_normal,
    "torch": _lecun_uniform,
    "he": _he_normal,
    "normal": _normal,
    "small": _small_normal,
}


class Layer:
    """Base: no parameters, buffers reused across batches of the same shape."""

    params: list[np.ndarray]
    grads: list[np.ndarray]

    def __init__(self):
        self.params, self.grads = [], []
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A C-contiguous scratch array kept between calls (reallocated when the shape changes)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(shape, dtype=dtype)
        return buf

    def _like(self, name: str, arr: np.ndarray) -> np.ndarray:
        return self._buffer(name, arr.shape, arr.dtype)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class Linear(Layer):
    r"""Fully connected: ``y = x W + b``, ``W`` of shape ``(fan_in, fan_out)``.

    Backward: ``dW = x^T dy``, ``db = \sum_n dy_n``, ``dx = dy W^T``. ``bias=False`` when a
    batch norm follows (its ``beta`` takes the bias's role and the mean subtraction cancels ``b``).
    """

    def __init__(self, fan_in: int, fan_out: int, rng: np.random.Generator, *, init: str = "glorot",
                 bias: bool = True, dtype=np.float32):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}; got {init!r}")
        self.weight = INITS[init](rng, fan_in, fan_out).astype(dtype)
        self.bias = np.zeros(fan_out, dtype=dtype) if bias else None
        self.params = [self.weight] + ([self.bias] if bias else [])
        self.grads = [np.zeros_like(p) for p in self.params]
        self.x: np.ndarray | None = None

    def forward(self, x, training):
        self.x = x
        y = np.matmul(x, self.weight, out=self._buffer("y", (x.shape[0], self.weight.shape[1]), x.dtype))
        if self.bias is not None:
            y += self.bias
        return y

    def backward(self, dy, *, input_grad: bool = True):
        """``dx`` (None with ``input_grad=False``: the first layer's input needs no gradient)."""
        np.matmul(self.x.T, dy, out=self.grads[0])
        if self.bias is not None:
            np.sum(dy, axis=0, out=self.grads[1])
        if not input_grad:
            return None
        return np.matmul(dy, self.weight.T, out=self._like("dx", self.x))


class BatchNorm(Layer):
    r"""Batch normalization over the batch axis, every computation done by bnref.

    Training: ``y = gamma (x - mean_B) / sqrt(var_B + eps) + beta`` with the batch's statistics
    (:func:`bnref.forward_train`), gradients through them (:func:`bnref.backward`), and running
    statistics updated PyTorch-style (:func:`bnref.update_running`: momentum weighs the new value,
    running variance unbiased).

    Evaluation (``training=False``): ``eval_stats="running"`` normalizes with the running statistics
    (:func:`bnref.forward_eval`); ``"batch"`` uses the evaluation batch's own statistics, as the seed
    post did (no running averages existed there), and leaves the running statistics alone.
    """

    def __init__(self, features: int, *, eps: float = 1e-5, momentum: float = 0.1,
                 eval_stats: str = "running", dtype=np.float32):
        super().__init__()
        if eval_stats not in ("running", "batch"):
            raise ValueError(f"eval_stats must be 'running' or 'batch'; got {eval_stats!r}")
        self.eps, self.momentum, self.eval_stats = eps, momentum, eval_stats
        self.gamma = np.ones(features, dtype=dtype)
        self.beta = np.zeros(features, dtype=dtype)
        self.running_mean = np.zeros(features, dtype=np.float64)
        self.running_var = np.ones(features, dtype=np.float64)
        self.params = [self.gamma, self.beta]
        self.grads = [np.zeros_like(self.gamma), np.zeros_like(self.beta)]
        self._saved = None  # (x, mean, var) of the last training forward

    def forward(self, x, training):
        y = self._like("y", x)
        if not training and self.eval_stats == "running":
            return bnref.forward_eval(x, self.gamma, self.beta, self.running_mean, self.running_var,
                                      self.eps, out=y)
        y, mean, var = bnref.forward_train(x, self.gamma, self.beta, self.eps, out=y)
        if training:
            self._saved = (x, mean, var)
            self.running_mean, self.running_var = bnref.update_running(
                self.running_mean, self.running_var, mean, var, x.shape[0], self.momentum)
        return y

    def backward(self, dy):
        if self._saved is None:
            raise RuntimeError("BatchNorm.backward needs a forward with training=True first")
        x, mean, var = self._saved
        dx, dgamma, dbeta = bnref.backward(dy, x, self.gamma, mean, var, self.eps, out=self._like("dx", x))
        self.grads[0][...] = dgamma
        self.grads[1][...] = dbeta
        return dx


class Tanh(Layer):
    r"""``y = tanh(x)``; ``dx = dy (1 - y^2)``."""

    def forward(self, x, training):
        self.y = np.tanh(x, out=self._like("y", x))
        return self.y

    def backward(self, dy):
        dx = np.multiply(self.y, self.y, out=self._like("dx", dy))
        np.subtract(1, dx, out=dx)
        dx *= dy
        return dx


class Sigmoid(Layer):
    r"""``y = 1 / (1 + e^{-x})``, computed as ``(1 + tanh(x/2)) / 2`` (no overflow); ``dx = dy y (1 - y)``."""

    def forward(self, x, training):
        y = np.multiply(x, 0.5, out=self._like("y", x))
        np.tanh(y, out=y)
        y += 1
        y *= 0.5
        self.y = y
        return y

    def backward(self, dy):
        dx = np.subtract(1, self.y, out=self._like("dx", dy))
        dx *= self.y
        dx *= dy
        return dx


class Dropout(Layer):
    r"""Inverted dropout: in training ``y = x m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``; identity in evaluation.

    The scaled mask of the last training forward is kept in ``self.mask`` (backward: ``dx = dy mask``).
    """

    def __init__(self, p: float, rng: np.random.Generator):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1); got {p!r}")
        self.p, self.rng = p, rng
        self.mask: np.ndarray | None = None

    def forward(self, x, training):
        if not training or self.p == 0:
            self.mask = None
            return x
        mask = self._like("mask", x)
        self.rng.random(out=mask, dtype=mask.dtype)
        # mask <- (u >= p) / (1 - p), in place: 1/(1-p) where kept, 0 where dropped
        np.greater_equal(mask, self.p, out=mask, casting="unsafe")
        mask *= 1.0 / (1.0 - self.p)
        self.mask = mask
        return np.multiply(x, mask, out=self._like("y", x))

    def backward(self, dy):
        if self.mask is None:
            return dy
        return np.multiply(dy, self.mask, out=self._like("dx", dy))


class LogSoftmaxNLL:
    r"""Mean negative log-likelihood of log-softmax logits.

    ``loss = -\frac1N \sum_n \log \mathrm{softmax}(z_n)_{t_n}``; ``dz = (\mathrm{softmax}(z) - \mathrm{onehot}(t)) / N``.
    """

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        shifted = logits - logits.max(axis=1, keepdims=True)  # log-sum-exp without overflow
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self.log_probs = shifted - log_norm
        self.labels = labels
        return float(-self.log_probs[np.arange(len(labels)), labels].astype(np.float64).mean())

    def backward(self) -> np.ndarray:
        n = len(self.labels)
        dz = np.exp(self.log_probs)
        dz[np.arange(n), self.labels] -= 1
        dz /= n
        return dz


class Network:
    """A stack of layers followed by :class:`LogSoftmaxNLL`, trained by plain SGD."""

    def __init__(self, layers: list[Layer]):
        self.layers = layers
        self.loss = LogSoftmaxNLL()

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Logits ``(N, classes)``."""
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self) -> None:
        """Back-propagate the last :meth:`loss_and_grad` loss; fills every layer's ``grads``."""
        dy = self.loss.backward()
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
        first = self.layers[0]
        if isinstance(first, Linear):
            first.backward(dy, input_grad=False)  # the data needs no gradient
        else:
            first.backward(dy)

    def loss_and_grad(self, x: np.ndarray, labels: np.ndarray) -> float:
        """One training forward and backward; returns the mean NLL of the batch."""
        loss = self.loss.forward(self.forward(x, training=True), labels)
        self.backward()
        return loss

    def sgd_step(self, lr: float) -> None:
        """``p <- p - lr * grad`` for every parameter, in place."""
        for layer in self.layers:
            for p, g in zip(layer.params, layer.grads):
                p -= lr * g

    def batchnorms(self) -> list[BatchNorm]:
        return [layer for layer in self.layers if isinstance(layer, BatchNorm)]
