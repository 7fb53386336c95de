"""Optional CPU speed paths of the modulated conv, chosen by ``modulated_conv.py`` for float32 CPU
tensors; each is checked against the op's reference path, and none is needed for correctness.

| module | holds |
|---|---|
| ``library`` | the C++ CPU kernels (``csrc/*_cpu.cpp``) built on first use, with typed ctypes wrappers |
| ``winograd`` | Winograd F(m, 3) transforms for 3x3 convolutions, in plain torch |
| ``winograd_native`` | the Winograd convolution on the C++ library's kernels |
| ``demod_act`` | demodulation + noise + bias + leaky ReLU in one CPU pass |
"""
