"""MNIST harness: the experiments that motivate batch normalization, trained with bnref's kernels.

- :mod:`bnref.mnist.data`: IDX reader, sha256-verified loader, fetch from torchvision's mirrors (npm as the fallback).
- :mod:`bnref.mnist.layers`: NumPy layers with hand-written backward; ``BatchNorm`` runs on bnref.
- :mod:`bnref.mnist.train`: the presets ``seed`` (the original post) and ``paper`` (Ioffe & Szegedy, Fig. 1).
- :mod:`bnref.mnist.plots`: matplotlib figures from a ``results.json`` (matplotlib imported lazily).
- :mod:`bnref.mnist.bench`: seconds per epoch of the seed network, bnref against PyTorch CPU.
- :mod:`bnref.mnist.cli`: ``bnref mnist ...``.
"""
