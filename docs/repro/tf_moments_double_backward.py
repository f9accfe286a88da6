"""TensorFlow: batch norm built on ``tf.nn.moments`` has a wrong double backward (second derivative),
in float64 as in float32: Keras 3 on the TensorFlow backend and tf_keras' non-fused layer inherit it.

Run: ``KERAS_BACKEND=tensorflow python docs/repro/tf_moments_double_backward.py`` (NumPy, TensorFlow;
tf_keras and Keras 3 where installed).

``tf.nn.moments`` computes the variance as ``reduce_mean(squared_difference(x, stop_gradient(mean)))``.
The stop_gradient leaves the first derivative right (the dropped term is a multiple of
sum(x - mean) = 0), so the forward pass and the backward pass agree with the math. It does not
leave the second derivative right: the Hessian of the variance becomes (2/m) I instead of
(2/m) (I - 1 1^T / m), so differentiating the backward pass again (double backward: gradient
penalties, Hessian-vector products, meta-learning) gives a wrong gx. This script compares gx, the
gradient of <dx, ddx> with respect to x, from two nested ``tf.GradientTape``s with the same
quantity by central differences of the closed-form dx in NumPy (float64); the same batch norm with
the variance written out without stop_gradient agrees to 1e-8, ``tf.nn.moments`` and both Keras
layers are off by half of gx's size (relative error 0.51). ``tf.compat.v1.nn.fused_batch_norm``
(tf_keras' default for 4D and 5D float32 and half inputs) has its own second-order gradient and
passes (``bnref check tf-keras --only double_backward``).
The stop_gradient was documented as changing nothing in https://github.com/tensorflow/tensorflow/pull/19609
(first order only); no upstream issue about its second derivative was found.
"""
import os

import numpy as np
import tensorflow as tf

EPS = 1e-3
M, C = 6, 2


def arrays(seed=0):
    """x (M, C), gamma, dy, ddx in float64."""
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, (M, C))
    gamma = rng.uniform(0.5, 2.0, C)
    return x, gamma, rng.standard_normal((M, C)), rng.standard_normal((M, C))


def closed_form_dx(x, gamma, dy):
    """dx of y = gamma (x - mean) / sqrt(var + eps) + beta (biased var, over axis 0)."""
    mean, var = x.mean(0), x.var(0)
    invstd = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean) * invstd
    return gamma * invstd * (dy - dy.mean(0) - xhat * (dy * xhat).mean(0))


def exact_gx(x, gamma, dy, ddx, h=1e-6):
    """d<dx, ddx>/dx by central differences of :func:`closed_form_dx` (no autodiff anywhere)."""
    gx = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        gx[index] = (np.sum(closed_form_dx(x + step, gamma, dy) * ddx)
                     - np.sum(closed_form_dx(x - step, gamma, dy) * ddx)) / (2 * h)
    return gx


def tape_gx(normalize, x, gamma, dy, ddx):
    """d<dx, ddx>/dx by two nested GradientTapes around ``normalize(x, gamma)`` (float64)."""
    x, gamma = tf.constant(x), tf.Variable(gamma)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = normalize(x, gamma)
        dx = inner.gradient(y, x, output_gradients=tf.constant(dy))
        pairing = tf.reduce_sum(dx * ddx)
    return outer.gradient(pairing, x).numpy()


def with_tf_nn_moments(x, gamma):
    mean, var = tf.nn.moments(x, axes=[0])
    return tf.nn.batch_normalization(x, mean, var, None, gamma, EPS)


def with_the_variance_written_out(x, gamma):
    mean = tf.reduce_mean(x, axis=0)
    var = tf.reduce_mean(tf.square(x - mean), axis=0)
    return tf.nn.batch_normalization(x, mean, var, None, gamma, EPS)


def with_tf_keras(x, gamma):
    """tf_keras' BatchNormalization (its non-fused path, which 2D input takes) in training mode."""
    import tf_keras

    layer = tf_keras.layers.BatchNormalization(epsilon=EPS, dtype="float64")
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    return layer(x, training=True)


def with_keras(x, gamma):
    """Keras 3's BatchNormalization on the TensorFlow backend (KERAS_BACKEND=tensorflow) in training mode."""
    import keras

    assert keras.backend.backend() == "tensorflow", "set KERAS_BACKEND=tensorflow before running"
    layer = keras.layers.BatchNormalization(epsilon=EPS, dtype="float64")
    layer.build(x.shape)
    (y, _), = [layer.stateless_call([gamma, tf.zeros_like(gamma)], [tf.zeros_like(gamma), tf.ones_like(gamma)],
                                    x, training=True)]
    return y


def relative_error(normalize, seed=0):
    """max |gx - exact| / max |exact| for one input."""
    x, gamma, dy, ddx = arrays(seed)
    exact = exact_gx(x, gamma, dy, ddx)
    return float(np.max(np.abs(tape_gx(normalize, x, gamma, dy, ddx) - exact)) / np.max(np.abs(exact)))


def main():
    print(f"tensorflow {tf.__version__}; x ({M}, {C}) float64, eps = {EPS}; gx against central differences")
    candidates = {"variance written out": with_the_variance_written_out, "tf.nn.moments": with_tf_nn_moments}
    try:
        import tf_keras

        candidates[f"tf_keras {tf_keras.__version__} BatchNormalization"] = with_tf_keras
    except ImportError:
        pass
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        import keras

        candidates[f"keras {keras.__version__} BatchNormalization"] = with_keras
    for name, normalize in candidates.items():
        print(f"{name:40} gx relative error {relative_error(normalize):.3g}")


if __name__ == "__main__":
    main()
