"""Checks shared by the Triton kernels' tests: Triton present, compiling for a GPU without one,
and a CPU path that never imports Triton."""
import os
import subprocess
import sys

import pytest


def require_triton() -> None:
    """Skip the calling test module where Triton is not installed; under CI (whose setup
    installs it) its absence is a failure, not a skip."""
    try:
        import triton  # noqa: F401
    except ImportError:
        if os.environ.get('CI'):
            raise
        pytest.skip('Triton is not installed (`make setup` installs it)', allow_module_level=True)


def compile_without_gpu(kernel, signature: dict, constexprs: dict, options: dict, arch: int):
    """Compile `kernel` for CUDA compute capability `arch` (Triton's bundled ptxas, no driver)
    and check the cubin exists and the PTX has no fused multiply-add (the kernels' equality
    with their torch versions relies on it)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget('cuda', arch, 32), options=options)
    assert len(compiled.asm['cubin']) > 1000
    assert 'fma.' not in compiled.asm['ptx']
    return compiled


def assert_triton_not_loaded(code: str) -> None:
    """Run `code` in a fresh interpreter and check it never imported Triton."""
    script = code + '\nassert "triton" not in sys.modules, "triton was imported"\n'
    result = subprocess.run([sys.executable, '-c', 'import sys\n' + script],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
