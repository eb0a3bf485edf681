"""Ptychography reconstruction: CXI input, far-field operators, a maximum-likelihood
conjugate-gradient solver for object and probe, the multi-device hybrid model,
result files and previews.

Works on NumPy arrays and, when CuPy is installed, on CuPy arrays with the same
code. Importing this package never needs CuPy.
"""

from recon.errors import DeviceError, InputError, InputFileNotFound, OptionsError, PtychoflowError

__all__ = [
    "DeviceError",
    "InputError",
    "InputFileNotFound",
    "OptionsError",
    "PtychoflowError",
]
