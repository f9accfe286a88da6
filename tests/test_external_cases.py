"""Other projects' batch-norm test cases, run through bnref.

* PyTorch's OpInfo sample inputs for ``nn.functional.batch_norm`` (the cases PyTorch tests its
  own operator on: weight and bias given or None, running statistics given or None, training
  on and off, odd momenta and eps), compared with ``torch.nn.functional.batch_norm`` itself;
* ONNX's backend-test cases for ``BatchNormalization`` (the inputs of its ``export*`` generators
  and the outputs of its reference functions ``_batchnorm_test_mode`` and
  ``_batchnorm_training_mode``), captured from the generators.

Each is mapped onto bnref's functions: inference uses the running statistics
(:func:`bnref.forward_eval`); training normalizes with the batch statistics
(:func:`bnref.forward_train`) and moves the running statistics with :func:`bnref.update_running`
in the case's convention (PyTorch: momentum weighs the batch, unbiased variance; ONNX: momentum
weighs the running value, biased variance). A case is skipped where its package is not installed
(torch's testing internals need ``expecttest``; ONNX is the ``onnx`` extra).
"""
from __future__ import annotations

import numpy as np
import pytest

import bnref

TOLERANCE = {np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6), np.dtype(np.float64): dict(rtol=1e-11, atol=1e-13)}


def _torch_samples(dtype_name: str) -> list[dict]:
    """PyTorch's OpInfo samples for batch_norm as NumPy arrays (copied: samples share tensors)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("expecttest")  # imported by torch's testing internals
    from torch.testing._internal.common_methods_invocations import op_db

    op = next(op for op in op_db if op.name == "nn.functional.batch_norm" and not op.variant_test_name)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    samples = []
    for sample in op.sample_inputs_func(op, device="cpu", dtype=dtype, requires_grad=False):
        as_numpy = lambda t: None if t is None else t.detach().numpy().copy()  # noqa: E731
        running_mean, running_var, weight, bias = map(as_numpy, sample.args)
        samples.append(dict(x=as_numpy(sample.input), running_mean=running_mean, running_var=running_var,
                            weight=weight, bias=bias, **sample.kwargs))
    return samples


def _torch_batch_norm(case: dict):
    """``(y, running_mean, running_var)`` of torch's op on a copy of ``case`` (it updates in place)."""
    import torch

    tensor = lambda a: None if a is None else torch.from_numpy(a.copy())  # noqa: E731
    running_mean, running_var = tensor(case["running_mean"]), tensor(case["running_var"])
    kwargs = {k: case[k] for k in ("training", "momentum", "eps") if k in case}
    y = torch.nn.functional.batch_norm(tensor(case["x"]), running_mean, running_var, tensor(case["weight"]),
                                       tensor(case["bias"]), **kwargs)
    return y.numpy(), None if running_mean is None else running_mean.numpy(), \
        None if running_var is None else running_var.numpy()


@pytest.fixture(scope="module", params=["float32", "float64"])
def torch_samples(request):
    return _torch_samples(request.param)


def test_pytorch_opinfo_samples_agree_with_torch(torch_samples):
    assert len(torch_samples) >= 10  # the generator still yields its cases
    compared = 0
    for case in torch_samples:
        x = case["x"]
        tolerance = TOLERANCE[x.dtype]
        if x.ndim < 2:  # torch accepts an empty (0,) input; bnref needs a channel axis
            with pytest.raises(ValueError, match="rank >= 2"):
                bnref.forward_train(x, case["weight"], case["bias"])
            continue
        c = x.shape[1]
        weight = np.ones(c, x.dtype) if case["weight"] is None else case["weight"]
        bias = np.zeros(c, x.dtype) if case["bias"] is None else case["bias"]
        eps, momentum = case.get("eps", 1e-5), case.get("momentum", 0.1)
        y_torch, mean_torch, var_torch = _torch_batch_norm(case)
        if case.get("training", False):
            y, mean, var = bnref.forward_train(x, weight, bias, eps)
            if case["running_mean"] is not None:
                if not 0 <= momentum <= 1:  # torch extrapolates; bnref's momentum is a weight
                    with pytest.raises(ValueError, match="momentum must lie in"):
                        bnref.update_running(case["running_mean"], case["running_var"], mean, var, x.size // c,
                                             momentum)
                else:
                    new_mean, new_var = bnref.update_running(case["running_mean"], case["running_var"], mean, var,
                                                             x.size // c, momentum)
                    np.testing.assert_allclose(new_mean, mean_torch, **tolerance)
                    np.testing.assert_allclose(new_var, var_torch, **tolerance)
        else:
            y = bnref.forward_eval(x, weight, bias, case["running_mean"], case["running_var"], eps)
        np.testing.assert_allclose(y, y_torch, **tolerance)
        assert y.dtype == y_torch.dtype
        compared += 1
    assert compared >= 10


def _onnx_cases() -> list[dict]:
    """ONNX's BatchNormalization backend-test cases: node attributes, inputs, expected outputs."""
    pytest.importorskip("onnx")
    from onnx import helper
    from onnx.backend.test.case.node import batch_normalization as generator

    cases = []

    def capture(node, *, inputs, outputs, name, **_):
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        cases.append(dict(name=name, attributes=attributes, inputs=inputs, outputs=outputs))

    state = np.random.get_state()
    original = generator.expect
    np.random.seed(0)
    generator.expect = capture
    try:
        generator.BatchNormalization.export()
        generator.BatchNormalization.export_train()
    finally:
        generator.expect = original
        np.random.set_state(state)
    return cases


def test_onnx_backend_cases_agree_with_its_reference():
    cases = _onnx_cases()
    assert {c["name"] for c in cases} >= {"test_batchnorm_example", "test_batchnorm_epsilon",
                                          "test_batchnorm_example_training_mode",
                                          "test_batchnorm_epsilon_training_mode"}
    for case in cases:
        x, scale, bias, mean, var = case["inputs"]
        eps = case["attributes"].get("epsilon", 1e-5)
        tolerance = TOLERANCE[x.dtype]
        if case["attributes"].get("training_mode", 0):
            y_onnx, mean_onnx, var_onnx = case["outputs"]
            y, batch_mean, batch_var = bnref.forward_train(x, scale, bias, eps)
            # ONNX: momentum (default 0.9) weighs the running value; the running variance is biased
            momentum = case["attributes"].get("momentum", 0.9)
            new_mean, new_var = bnref.update_running(mean, var, batch_mean, batch_var, x.size // x.shape[1],
                                                     1.0 - momentum, unbiased=False)
            np.testing.assert_allclose(new_mean, mean_onnx, **tolerance, err_msg=case["name"])
            np.testing.assert_allclose(new_var, var_onnx, **tolerance, err_msg=case["name"])
        else:
            (y_onnx,) = case["outputs"]
            y = bnref.forward_eval(x, scale, bias, mean, var, eps)
        np.testing.assert_allclose(y, y_onnx, **tolerance, err_msg=case["name"])
