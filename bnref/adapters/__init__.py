"""Candidates for the oracle, one module per framework, each importing its framework lazily.

``create(name)`` builds a registered adapter; ``ADAPTERS`` maps each name to
``"module:factory"`` so that listing them imports nothing.
"""
from __future__ import annotations

import importlib

__all__ = ["ADAPTERS", "create"]

#: adapter name -> "module:factory" (the factory takes no arguments)
ADAPTERS: dict[str, str] = {
    "bnref": "bnref.adapters._bnref:BnrefCandidate",
    "bnref-mixed": "bnref.adapters._bnref:BnrefMixedCandidate",
    "torch": "bnref.adapters._torch:TorchCandidate",
    "torch-channels-last": "bnref.adapters._torch:TorchChannelsLastCandidate",
    "torch-mixed": "bnref.adapters._torch:TorchMixedCandidate",
    "torch-compile": "bnref.adapters._torch_compile:TorchCompileCandidate",
    "flax": "bnref.adapters._flax:FlaxCandidate",
    "flax-two-pass": "bnref.adapters._flax:FlaxTwoPassCandidate",
    "flax-bf16": "bnref.adapters._flax:FlaxBf16Candidate",
    "flax-sync": "bnref.adapters._flax_sync:FlaxSyncCandidate",
    "flax-nnx": "bnref.adapters._flax_nnx:FlaxNnxCandidate",
    "flax-nnx-two-pass": "bnref.adapters._flax_nnx:FlaxNnxTwoPassCandidate",
    "keras": "bnref.adapters._keras:KerasCandidate",
    "keras-mixed-bf16": "bnref.adapters._keras:KerasMixedBf16Candidate",
    "keras-torch": "bnref.adapters._keras_torch:KerasTorchCandidate",
    "keras-tensorflow": "bnref.adapters._keras_tensorflow:KerasTensorflowCandidate",
    "tf-keras": "bnref.adapters._tf_keras:TfKerasCandidate",
    "tf-keras-nonfused": "bnref.adapters._tf_keras:TfKerasNonFusedCandidate",
    "seed": "bnref.adapters._seed:SeedCandidate",
    "equinox": "bnref.adapters._equinox:EquinoxCandidate",
    "equinox-batch": "bnref.adapters._equinox:EquinoxBatchCandidate",
    "haiku": "bnref.adapters._haiku:HaikuCandidate",
    "onnxruntime": "bnref.adapters._onnxruntime:OnnxRuntimeCandidate",
    "paddle": "bnref.adapters._paddle:PaddleCandidate",
    "mlx": "bnref.adapters._mlx:MlxCandidate",
    "tensorflow": "bnref.adapters._tensorflow:TensorFlowCandidate",
    "tensorflow-fused": "bnref.adapters._tensorflow:TensorFlowFusedCandidate",
    "tensorflow-fused-nchw": "bnref.adapters._tensorflow:TensorFlowFusedNchwCandidate",
    "tinygrad": "bnref.adapters._tinygrad:TinygradCandidate",
}


def create(name: str):
    """A fresh candidate for the adapter ``name`` (ImportError if its framework is missing)."""
    if name not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; known: {', '.join(ADAPTERS)}")
    module_name, factory = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module_name), factory)()
