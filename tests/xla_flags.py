"""The XLA flags of the test suite's processes (imports nothing, so conftest can use it before JAX loads)."""


def cpu_xla_flags(devices: int) -> str:
    """`devices` simulated CPU devices, and LLVM's -O1 for XLA's CPU code: compiling, most of this suite's
    time, is ~25% faster than at the default -O2 (the tiny MCi step: 28 s -> 21 s) and the tests' small
    programs run as fast (-O0 compiled faster still but the suite ran slower)."""
    return f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=1"
