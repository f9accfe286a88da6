r"""bnref: the reference implementation of batch normalization (Ioffe & Szegedy, 2015).

Per channel, over the ``m`` values of every axis but ``channel_axis``:

.. math:: y = \gamma\,\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta

Public API (NumPy arrays in and out, Numba kernels underneath)::

    y, mean, var      = forward_train(x, gamma, beta, eps=1e-5, channel_axis=1)
    y                 = forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5, channel_axis=1)
    dx, dgamma, dbeta = backward(dy, x, gamma, mean, var, eps=1e-5, channel_axis=1)
    dx, dgamma, dbeta = backward_eval(dy, x, gamma, running_mean, running_var, eps=1e-5, channel_axis=1)
    gx, ggamma, gdy   = double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps=1e-5, channel_axis=1)
    new_mean, new_var = update_running(running_mean, running_var, mean, var, count, momentum=0.1)

``bnref.reference`` holds the same forward in plain ``autograd.numpy`` (gradients by
autodiff), ``bnref.finite_diff`` central differences, ``bnref.strategies`` Hypothesis
strategies, ``bnref.testing`` tolerances and assertion helpers.
"""
from bnref.functional import backward as backward
from bnref.functional import backward_eval as backward_eval
from bnref.functional import double_backward as double_backward
from bnref.functional import forward_eval as forward_eval
from bnref.functional import forward_train as forward_train
from bnref.functional import update_running as update_running

__version__ = "0.1.0"

__all__ = ["forward_train", "forward_eval", "backward", "backward_eval", "double_backward",
           "update_running", "__version__"]
