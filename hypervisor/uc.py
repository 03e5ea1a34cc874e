"""The one place that loads Unicorn and ftvm's C fast path, in that order.

The fast path links against the libunicorn.so.2 that the unicorn wheel ships; the
dynamic loader finds it only once `import unicorn` has opened it."""
import unicorn  # noqa: F401  (must come first)
from unicorn import unicorn_const as UC
from unicorn import x86_const as X86

try:
    from . import _fastpath
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(f"ftvm's C fast path is not built ({e}); run `pip install -e .` in the checkout") from None

ffi = _fastpath.ffi
lib = _fastpath.lib


def _hand_over_zlib_crc32():
    """The C side checksums the log frames it writes (file reads: many KiB each) with
    zlib's crc32 when it can have it: the one zlib Python's own zlib module uses."""
    import ctypes
    try:
        fn = ctypes.cast(ctypes.CDLL("libz.so.1").crc32, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return
    lib.ftvm_set_crc32(ffi.cast("void *", fn))


_hand_over_zlib_crc32()

TSC_HOST, TSC_SYNTHETIC, TSC_REPLAY = 0, 1, 2
DIV_TSC_EXHAUSTED, DIV_TSC_POINT = 1, 2
SYNC_TSC_DRAIN, SYNC_DIVERGED, SYNC_HYPERCALL = 1, 2, 4
NO_STOP = (1 << 64) - 1

__all__ = ["unicorn", "UC", "X86", "ffi", "lib"]
