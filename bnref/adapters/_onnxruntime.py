"""ONNX Runtime: one ONNX ``BatchNormalization`` node (opset 15) run by the CPU execution provider.

A runtime for inference, without gradients: the adapter provides no ``backward`` (nor
``double_backward``). The forward in training comes from the node's ``training_mode=1``
(opset 14 and later), whose outputs are ``Y``, ``running_mean`` and ``running_var``:

* ``forward_train`` -- ``Y`` of a training-mode node (batch statistics);
* ``update_running`` -- the node's ``running_mean``, ``running_var``: ONNX's
  ``input * momentum + batch * (1 - momentum)``, with the batch's biased variance;
* ``forward_eval`` -- ``Y`` of an inference node (``training_mode=0``) with the given statistics.

``epsilon`` and ``momentum`` are node attributes, which ONNX stores as float32 whatever the
tensors' dtype: on float64 data both arrive rounded to float32. The model has the input's rank
and dtype (float32 or float64; ONNX Runtime's CPU kernel has no half types for this node) and
symbolic dimensions; one session per (dtype, rank, eps, momentum, training mode) is kept, the
most recent :data:`SESSION_CACHE_SIZE` of them. Sessions run on one intra-op thread.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

#: the BatchNormalization version checked: 15 (training_mode outputs since 14, bfloat16 typing since 15)
OPSET = 15
#: sessions kept (the oracle draws a new eps per example: an unbounded cache would only grow)
SESSION_CACHE_SIZE = 32
PARAMETERS = ("scale", "B", "input_mean", "input_var")


class OnnxRuntimeCandidate:
    name = "onnxruntime"
    dtypes = ("float32", "float64")
    channel_axis = 1

    def __init__(self):
        import onnx
        import onnxruntime

        self._onnx, self._ort = onnx, onnxruntime
        self._sessions: OrderedDict = OrderedDict()
        self.version = (f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider), onnx {onnx.__version__}, "
                        f"opset {OPSET}")

    def _model(self, dtype, rank, eps, momentum, training):
        """The serialized one-node model for x of ``dtype`` and ``rank``."""
        helper = self._onnx.helper
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        dims = [f"d{i}" for i in range(rank)]
        outputs = ["Y", "running_mean", "running_var"] if training else ["Y"]
        node = helper.make_node("BatchNormalization", ["X", *PARAMETERS], outputs, epsilon=float(eps),
                                momentum=float(momentum), training_mode=int(training))
        graph = helper.make_graph(
            [node], "batch_norm",
            [helper.make_tensor_value_info("X", elem, dims)]
            + [helper.make_tensor_value_info(p, elem, ["C"]) for p in PARAMETERS],
            [helper.make_tensor_value_info("Y", elem, dims)]
            + [helper.make_tensor_value_info(o, elem, ["C"]) for o in outputs[1:]])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        self._onnx.checker.check_model(model)
        return model.SerializeToString()

    def _session(self, dtype, rank, eps, momentum, training):
        key = (np.dtype(dtype).name, rank, float(eps), float(momentum), training)
        if key in self._sessions:
            self._sessions.move_to_end(key)
            return self._sessions[key]
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = self._ort.InferenceSession(self._model(*key[:2], eps, momentum, training), options,
                                             providers=["CPUExecutionProvider"])
        self._sessions[key] = session
        if len(self._sessions) > SESSION_CACHE_SIZE:
            self._sessions.popitem(last=False)
        return session

    def _run(self, x, gamma, beta, mean, var, eps, momentum, training):
        x = np.ascontiguousarray(x)
        feeds = dict(zip(("X", *PARAMETERS), [x] + [np.ascontiguousarray(a, dtype=x.dtype)
                                                   for a in (gamma, beta, mean, var)]))
        return self._session(x.dtype, x.ndim, eps, momentum, training).run(None, feeds)

    def forward_train(self, x, gamma, beta, eps):
        channels = x.shape[1]
        ones = np.ones(channels, x.dtype)
        return self._run(x, gamma, beta, 0 * ones, ones, eps, 0.9, training=True)[0]

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return self._run(x, gamma, beta, running_mean, running_var, eps, 0.9, training=False)[0]

    def update_running(self, x, running_mean, running_var, momentum):
        ones = np.ones(x.shape[1], x.dtype)
        _, mean, var = self._run(x, ones, 0 * ones, running_mean, running_var, 1e-5, momentum, training=True)
        return mean, var
