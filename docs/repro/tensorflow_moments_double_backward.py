"""TensorFlow: the second derivative of a batch norm built on ``tf.nn.moments`` is wrong.

Run: ``python docs/repro/tensorflow_moments_double_backward.py`` (NumPy and TensorFlow only).

``tf.nn.moments`` computes the variance as ``reduce_mean(squared_difference(x, stop_gradient(mean)))``.
Its source comments that the ``stop_gradient`` "does not change the gradient", because
d var / d mean = -2 mean(x - mean) = 0: true for the first derivative, so y and dx are right. The
derivative of that gradient is not: the Hessian of the variance comes out as (2/m) I instead of
(2/m)(I - 1 1^T / m). A double backward through the composite batch norm users write,
``tf.nn.batch_normalization(x, *tf.nn.moments(x, axes), beta, gamma, eps)`` -- a gradient penalty
(WGAN-GP), a Hessian-vector product, MAML -- then gets gx = d<ddx, dx>/dx off by the same value
in every element of a channel:

    gx_tf - gx = -(gamma / m) (var + eps)^(-3/2) sum_j dy_j (x_j - mean) * mean(ddx)

zero only where mean(ddx) = 0 per channel. The script computes gx in float64 three ways: nested
``tf.GradientTape``s through ``tf.nn.moments``, the same with the variance written without the
``stop_gradient``, and central differences of TensorFlow's own (correct) first backward.
"""
import numpy as np
import tensorflow as tf

EPS = 1e-5
#: one channel of four values, a cotangent dy and a direction ddx with mean(ddx) != 0 (float64)
X = np.array([[0.5], [1.5], [-1.0], [2.0]])
DY = np.array([[0.3], [-1.2], [0.7], [0.4]])
DDX = np.array([[1.0], [0.5], [-0.25], [2.0]])
GAMMA = np.array([1.7])


def moments_without_stop_gradient(x, axes):
    mean = tf.reduce_mean(x, axes)
    return mean, tf.reduce_mean(tf.square(x - mean), axes)


def dx_of(x, moments=tf.nn.moments):
    """dx of the composite batch norm (one tape) at float64 x, for :data:`DY`."""
    gamma, beta = tf.constant(GAMMA), tf.zeros(1, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        mean, var = moments(x, [0])
        y = tf.nn.batch_normalization(x, mean, var, beta, gamma, EPS)
    return tape.gradient(y, x, output_gradients=tf.constant(DY))


def gx_nested_tapes(moments=tf.nn.moments):
    """gx = d<DDX, dx>/dx by a tape around the backward."""
    x = tf.constant(X)
    with tf.GradientTape() as outer:
        outer.watch(x)
        pairing = tf.reduce_sum(dx_of(x, moments) * DDX)
    return outer.gradient(pairing, x).numpy()


def gx_central_differences(h=1e-5):
    """gx by central differences of TensorFlow's first backward (tf.nn.moments), element by element."""
    gx = np.zeros_like(X)
    for i in np.ndindex(X.shape):
        step = np.zeros_like(X)
        step[i] = h
        plus, minus = (float(tf.reduce_sum(dx_of(tf.constant(X + s)) * DDX)) for s in (step, -step))
        gx[i] = (plus - minus) / (2 * h)
    return gx


def missing_term():
    """The closed form of gx_tf - gx (the same for every element of the channel)."""
    m, centred = len(X), X - X.mean(axis=0)
    var = (centred ** 2).mean(axis=0)
    return -(GAMMA / m) * (var + EPS) ** -1.5 * (DY * centred).sum(axis=0) * DDX.mean(axis=0)


def results():
    return {"tf.nn.moments": gx_nested_tapes(),
            "without stop_gradient": gx_nested_tapes(moments_without_stop_gradient),
            "central differences": gx_central_differences()}


if __name__ == "__main__":
    print(f"tensorflow {tf.__version__}")
    gx = results()
    for name, value in gx.items():
        print(f"gx {name:<22} {np.array2string(value.ravel(), precision=6)}")
    print(f"difference tf.nn.moments - central differences: "
          f"{np.array2string((gx['tf.nn.moments'] - gx['central differences']).ravel(), precision=6)}")
    print(f"closed form of the missing term: {missing_term()[0]:.6f} in every element")
