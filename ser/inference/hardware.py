"""What the machine this process runs on can do, as far as the serving backends care.

Read once per process (:func:`detect_hardware`); everything that depends on the CPU or GPU takes a
:class:`Hardware` so tests can pass a made-up one instead of patching the machine.

Two settings that users (and the benchmarks) use to make a big CPU behave like a small one are
honoured: ``ATEN_CPU_CAPABILITY`` (PyTorch's kernel level, e.g. ``avx2``; it shows up in
``torch.backends.cpu.get_cpu_capability()``) and ``ONEDNN_MAX_CPU_ISA`` (oneDNN's instruction-set
ceiling, e.g. ``AVX2``). Either one below AVX-512-bf16 means PyTorch would emulate bf16, so bf16
counts as absent; a oneDNN ceiling below VNNI makes int8 treat the CPU as one without VNNI.

``benchmarks/cpu_mask/run`` goes further: it masks CPUID itself, so every library (ONNX Runtime
included) sees the older CPU; detection then reads the masked answers, and :func:`cpuid_mask_level`
says so in the description.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ONEDNN_ISA_ENV_VAR = "ONEDNN_MAX_CPU_ISA"
#: Set by ``benchmarks/cpu_mask/run`` (with ``LD_PRELOAD`` of its library) to the CPU level it shows.
CPUID_MASK_ENV_VAR = "CPUID_MASK_LEVEL"
#: Set by Hugging Face on ZeroGPU Spaces (the GPU is attached only inside ``@spaces.GPU`` calls).
ZERO_GPU_ENV_VAR = "SPACES_ZERO_GPU"

#: oneDNN ISA ceilings (``ONEDNN_MAX_CPU_ISA``) in increasing order; names from the oneDNN docs.
_ONEDNN_ISA_ORDER = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX_FP16",
)


@dataclass(frozen=True)
class Hardware:
    """The facts the backend choice is made from (see :func:`ser.inference.backends.choose_backend`)."""

    cpu_model: str
    #: ``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2``, ``DEFAULT``, ...
    cpu_capability: str
    #: bf16 matmuls run in hardware at the kernel level PyTorch uses (AVX-512-bf16 or AMX-bf16).
    cpu_bf16: bool
    #: int8 dot products without 16-bit saturation (AVX-512-VNNI, AVX-VNNI or AMX-int8).
    cpu_vnni: bool
    cpu_amx: bool
    cuda_device: str | None = None
    cuda_bf16: bool = False
    #: Running on a ZeroGPU Space with the ``spaces`` package importable.
    zero_gpu: bool = False
    #: The level ``benchmarks/cpu_mask/run`` masks CPUID to (``avx2``, ...), ``None`` for the CPU as it is.
    cpuid_mask: str | None = None

    @property
    def has_cuda(self) -> bool:
        return self.cuda_device is not None

    def describe(self) -> str:
        """One line for logs and ``/health``: ``Intel Xeon ..., AVX512, bf16 yes, VNNI yes, AMX yes``."""
        text = (
            f"{self.cpu_model}, {self.cpu_capability}, bf16 {'yes' if self.cpu_bf16 else 'no'}, "
            f"VNNI {'yes' if self.cpu_vnni else 'no'}, AMX {'yes' if self.cpu_amx else 'no'}"
        )
        if self.cpuid_mask:
            text += f" (CPUID masked to {self.cpuid_mask})"
        if self.cuda_device:
            text += f"; CUDA {self.cuda_device} ({'bf16' if self.cuda_bf16 else 'fp16'})" + (" on ZeroGPU" if self.zero_gpu else "")
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_model_name() -> str:
    """The marketing name (``/proc/cpuinfo`` ``model name``), else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpuid_mask_level() -> str | None:
    """The level ``benchmarks/cpu_mask/run`` masks this process's CPUID to, if it does."""
    level = os.environ.get(CPUID_MASK_ENV_VAR)
    return level if level and "cpuid_mask" in os.environ.get("LD_PRELOAD", "") else None


def _cpu_flags() -> dict[str, bool]:
    import torch

    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        return {key: bool(value) for key, value in get_capabilities().items() if isinstance(value, bool)}
    # Older torch: the Linux kernel's flag names are the same as cpuinfo's for the ones used here.
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return {}
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags") and ":" in line:
            return {flag: True for flag in line.split(":", 1)[1].split()}
    return {}


def _onednn_ceiling_allows(minimum: str, setting: str | None) -> bool:
    """Whether ``ONEDNN_MAX_CPU_ISA=setting`` (unset, ``ALL``/``DEFAULT``, or an unknown name: no
    ceiling) still lets oneDNN use ``minimum``."""
    if not setting or setting.strip().upper() in ("ALL", "DEFAULT"):
        return True
    name = setting.strip().upper()
    if name not in _ONEDNN_ISA_ORDER:
        logger.warning("Unknown %s=%s: treated as no ceiling", ONEDNN_ISA_ENV_VAR, setting)
        return True
    return _ONEDNN_ISA_ORDER.index(name) >= _ONEDNN_ISA_ORDER.index(minimum)


def hardware_from(
    flags: dict[str, bool],
    cpu_capability: str,
    cpu_model: str = "unknown CPU",
    onednn_max_isa: str | None = None,
    cuda_device: str | None = None,
    cuda_bf16: bool = False,
    zero_gpu: bool = False,
    cpuid_mask: str | None = None,
) -> Hardware:
    """:class:`Hardware` from raw facts (cpuinfo flag names, PyTorch's kernel level, oneDNN's ceiling)."""
    capability = cpu_capability.upper()
    bf16_in_silicon = flags.get("avx512_bf16", False) or flags.get("amx_bf16", False)
    # PyTorch only runs bf16 natively from its AVX512 kernels, through oneDNN's bf16 code paths.
    cpu_bf16 = bf16_in_silicon and capability.startswith("AVX512") and _onednn_ceiling_allows("AVX512_CORE_BF16", onednn_max_isa)
    vnni_in_silicon = flags.get("avx512_vnni", False) or flags.get("avx_vnni", False) or flags.get("amx_int8", False)
    cpu_vnni = vnni_in_silicon and _onednn_ceiling_allows("AVX2_VNNI", onednn_max_isa)
    cpu_amx = flags.get("amx_tile", False) and _onednn_ceiling_allows("AVX512_CORE_AMX", onednn_max_isa)
    return Hardware(
        cpu_model, capability, cpu_bf16, cpu_vnni, cpu_amx, cuda_device, cuda_bf16 and cuda_device is not None, zero_gpu, cpuid_mask
    )


def zero_gpu_available() -> bool:
    """A ZeroGPU Space (``$SPACES_ZERO_GPU``) with the ``spaces`` package installed."""
    return bool(os.environ.get(ZERO_GPU_ENV_VAR)) and importlib.util.find_spec("spaces") is not None


@functools.cache
def detect_hardware() -> Hardware:
    """This machine, read once per process."""
    import torch

    zero_gpu = zero_gpu_available()
    if zero_gpu:
        # On ZeroGPU, torch.cuda only answers after ``spaces`` has been imported (it patches torch).
        import spaces  # noqa: F401

    cuda_device, cuda_bf16 = None, False
    if torch.cuda.is_available():
        try:
            cuda_device = torch.cuda.get_device_name(0)
            cuda_bf16 = bool(torch.cuda.is_bf16_supported())
        except RuntimeError:
            # ZeroGPU attaches the device only inside @spaces.GPU calls; its GPUs (H100/H200) do bf16.
            cuda_device, cuda_bf16 = ("ZeroGPU device", True) if zero_gpu else (None, False)
    return hardware_from(
        _cpu_flags(),
        torch.backends.cpu.get_cpu_capability(),
        cpu_model_name(),
        os.environ.get(ONEDNN_ISA_ENV_VAR),
        cuda_device,
        cuda_bf16,
        zero_gpu,
        cpuid_mask_level(),
    )


def limit_numpy_blas_threads(limit: int = 1) -> list[dict]:
    """Cap numpy's BLAS (OpenBLAS) thread pool at ``limit`` threads for the rest of the process.

    A server runs the model right after small numpy work (the quality gate, resampling); an OpenBLAS
    call with more than one thread leaves its worker threads spinning for a while after it returns,
    on the cores the model then needs: the bundled model took twice as long inside the app as alone
    on a 2-core machine (benchmarks/model_time.py). The model's own threads (PyTorch, ONNX Runtime)
    are separate pools and keep their settings. Returns threadpoolctl's description of the pools.
    """
    import numpy  # noqa: F401  (loads numpy's BLAS so threadpoolctl can see it)
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=limit, user_api="blas")

    pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    logger.info("numpy BLAS limited to %d thread(s): %s", limit, ", ".join(f"{p.get('internal_api')} {p.get('num_threads')}" for p in pools))
    return pools


#: glibc's mallopt parameters (malloc.h): the number of malloc arenas, and the size from which an
#: allocation gets its own mmap (handed back to the system when freed).
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3


def tune_malloc_for_serving(arenas: int = 2, mmap_threshold_bytes: int = 128 * 1024) -> bool:
    """Keep a long-running server's C heap from growing with traffic that holds no memory (as
    ``MALLOC_ARENA_MAX`` and ``MALLOC_MMAP_THRESHOLD_`` would at start).

    By default glibc gives each thread that allocates an arena of its own (Gradio runs handlers in
    up to 40 threads), and raises its mmap threshold to the largest block freed so far, so that audio
    buffers (a 60 s live recording is 3.8 MB) end up in those arenas' heaps; buffers of every length,
    freed in one thread and allocated in another, leave the heaps fragmented and RSS climbs. Two
    arenas and a fixed 128 kB threshold (buffers above it are mapped and unmapped whole) cut the
    growth over 100 live sessions from 196 MB to 67 MB (``benchmarks/live_soak.py``; docs/serving.md).
    Returns whether both were set (False where the C library is not glibc).
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None or not (mallopt(_M_ARENA_MAX, arenas) and mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)):
        logger.info("malloc not tuned (not glibc)")
        return False
    logger.info("malloc tuned for serving: %d arenas, mmap from %d kB", arenas, mmap_threshold_bytes // 1024)
    return True


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim(0)``), e.g. after a
    live recording's buffers and its Stop's whole-recording pass are freed; whether anything went
    back (False also where the C library is not glibc)."""
    trim = _libc_function("malloc_trim")
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _libc_function(name: str):
    """A function of the process's C library, or ``None`` where it has none of that name (not glibc)."""
    import ctypes
    import ctypes.util

    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name, None) if library else None
    except OSError:
        return None
