"""The serving backends by name, the variables that pick them, and the errors they raise: the
vocabulary shared by the choice, the ONNX export and the runners."""

BACKEND_ENV_VAR = "SER_BACKEND"
THREADS_ENV_VAR = "SER_NUM_THREADS"
#: ``--backend auto`` (or ``SER_BACKEND=auto``) asks for the automatic choice explicitly.
AUTO = "auto"

#: name -> what it is (shown in ``--help`` and the README).
BACKENDS: dict[str, str] = {
    "torch": "PyTorch fp32, the reference",
    "onnx": "ONNX Runtime fp32 (same numbers as torch, less overhead)",
    "onnx-int8": "ONNX Runtime, int8 weights in the linear (MatMul) layers, dynamic activation quantization "
    "(7-bit weights on CPUs without VNNI, where 8-bit products can saturate)",
    "bf16": "PyTorch with bfloat16 weights and activations (CPUs with hardware bf16; emulated and slow elsewhere)",
    "cuda": "PyTorch on the GPU with bf16 autocast (fp16 where the GPU has no bf16)",
}


class BackendError(RuntimeError):
    """A backend could not be built (export or session creation failed)."""


class UnknownBackendError(BackendError, ValueError):
    """The backend name is not one of :data:`BACKENDS`."""


class BackendUnavailableError(BackendError):
    """The backend was asked for explicitly but this machine cannot run it (``cuda`` without a GPU)."""
