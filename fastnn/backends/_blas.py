"""The BLAS that compiled loops call: the address of the Fortran sgemm/dgemm
that SciPy exports (scipy.linalg.cython_blas, the BLAS Numba's np.dot calls),
called by the recurrent kernels of the numba and C backends with no Python
between time steps (its integers are 32-bit), and that BLAS's thread count, set
to one while a kernel runs GEMMs on several threads of its own."""

import contextlib
import ctypes
import functools
import threading

from scipy.linalg import cython_blas

INT32_MAX = 2**31 - 1


def _capsule_address(capsule):
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def blas_gemm(name):
    """The address of BLAS's Fortran ?gemm (name: "sgemm" or "dgemm"), every
    argument by pointer: (transa, transb, m, n, k, alpha, a, lda, b, ldb, beta,
    c, ldc), integers 32-bit."""
    return _capsule_address(cython_blas.__pyx_capi__[name])


def int32_sizes(x, W_h):
    """Whether a recurrent call over x (N, T, F) with W_h (H, G*H) has work for
    BLAS (no empty axis) and every GEMM size and row stride fits its 32-bit
    integers (else the caller takes the reference)."""
    n, steps, f = x.shape
    hidden, width = W_h.shape
    sizes = (n * steps, f, width, steps * width)
    return x.size > 0 and hidden > 0 and max(sizes) <= INT32_MAX


def _library_of(address):
    """The path of the shared library that holds `address` (dladdr), or None."""
    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except (OSError, AttributeError):  # no dladdr (Windows)
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    info = DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return info.dli_fname.decode()


@functools.cache
def blas_thread_functions():
    """(set_num_threads, get_num_threads) of the BLAS that blas_gemm's ?gemm
    calls (looked up in the library holding that address and the libraries it
    links: cython_blas's wrapper links SciPy's BLAS), as ctypes functions, or
    None when it has none that fastnn knows (see openblas_thread_functions)."""
    path = _library_of(blas_gemm("sgemm"))
    return None if path is None else openblas_thread_functions(path)


@functools.cache
def openblas_thread_functions(path):
    """(set_num_threads, get_num_threads) of the OpenBLAS at `path` as ctypes
    functions (its openblas_set/get_num_threads, with the prefixes and suffixes
    of its renamed builds, SciPy's "scipy_" among them), or None."""
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            set_fn = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
            get_fn = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
            if set_fn is not None and get_fn is not None:
                set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
                get_fn.argtypes, get_fn.restype = [], ctypes.c_int
                return set_fn, get_fn
    return None


@functools.cache
def _every_blas_thread_functions():
    """[(set, get)] of every BLAS loaded (threadpoolctl's list: NumPy's and
    SciPy's), or None unless each is an OpenBLAS on its own threads (pthreads)."""
    functions = []
    for lib in blas_controller().lib_controllers:
        if lib.internal_api != "openblas" or lib.threading_layer != "pthreads":
            return None
        pair = openblas_thread_functions(lib.filepath)
        if pair is None:
            return None
        functions.append(pair)
    return functions


class _OneThreadScope:
    """The body with the BLAS libraries of `functions` ([(set, get)], or None:
    none that can be told) on one thread, their counts restored after; entering
    gives whether it could (False: none to tell, or `lock` held by another
    scope, which keeps the counts). A class, not a generator: a recurrent
    kernel enters one at each call (2.4 against 4.2 us warm, Zen 4)."""

    __slots__ = ("_functions", "_lock", "_before")

    def __init__(self, functions, lock):
        self._functions, self._lock = functions, lock
        self._before = None

    def __enter__(self):
        if self._functions is None:
            return False
        self._before = _set_one_thread(self._functions, self._lock)
        return self._before is not None

    def __exit__(self, *exc_info):
        before, self._before = self._before, None
        if before is not None:
            _restore_threads(self._functions, before, self._lock)
        return False


def _set_one_thread(functions, lock):
    """The thread counts of the BLAS libraries of `functions` ([(set, get)]),
    each then set to one, with `lock` taken; None when another holds `lock`."""
    if not lock.acquire(blocking=False):
        return None
    try:
        before = [get() for _, get in functions]
        for (set_threads, _), n in zip(functions, before):
            if n != 1:
                set_threads(1)
    except BaseException:
        lock.release()
        raise
    return before


def _restore_threads(functions, before, lock):
    """Undoes _set_one_thread: the counts `before` restored, `lock` released."""
    try:
        for (set_threads, _), n in zip(functions, before):
            if n != 1:
                set_threads(n)
    finally:
        lock.release()


class _Held:
    thread = None  # the thread inside an every_blas_on_one_thread scope that set the counts


_held = _Held()
_every_blas_lock = threading.Lock()


class _EveryBlasScope:
    """every_blas_on_one_thread's scope over OpenBLAS libraries on their own
    threads: every BLAS of `functions` ([(set, get)]) on one thread in the
    body, the counts restored after. One object serves every entry, from any
    thread, nested or not (a training step enters it at each call; one made
    at each call cost the recurrent benchmark's step 1.6 us more, caches cold
    after the kernels, alternating in one process). Entering gives whether it
    set the counts: False inside another entry of this thread, whose counts
    stay until it ends (counted, so that the matching exit leaves them), or
    while another thread's entry holds them (that exit leaves them too: the
    holder is not its thread)."""

    __slots__ = ("_functions", "_before", "_nested")

    def __init__(self, functions):
        self._functions = functions
        self._before = None  # the counts the holder restores
        self._nested = 0  # entries inside the holder's, in its thread

    def __enter__(self):
        me = threading.get_ident()
        if _held.thread == me:
            self._nested += 1
            return False
        before = _set_one_thread(self._functions, _every_blas_lock)
        if before is None:
            return False
        self._before = before
        _held.thread = me
        return True

    def __exit__(self, *exc_info):
        if _held.thread != threading.get_ident():  # entered while another thread held the counts
            return False
        if self._nested:
            self._nested -= 1
            return False
        before, self._before = self._before, None
        _held.thread = None
        _restore_threads(self._functions, before, _every_blas_lock)
        return False


@functools.cache
def _every_blas_scope():
    """The _EveryBlasScope of every BLAS loaded, or None when some BLAS is not
    an OpenBLAS on its own threads (see _every_blas_thread_functions)."""
    functions = _every_blas_thread_functions()
    return None if functions is None else _EveryBlasScope(functions)


def every_blas_on_one_thread():
    """Runs the body with every BLAS loaded on one thread (the counts they had are
    restored after); see training.blas_scope. For OpenBLAS on its own threads,
    two ctypes calls per library each way (threadpoolctl's limit took about 140
    us a training step of the recurrent benchmark, Zen 4, its Python run with
    the caches cold after the kernels); other BLAS through threadpoolctl. A
    scope inside another (or beside one in another Python thread) leaves the
    counts to the outer one."""
    scope = _every_blas_scope()
    return blas_controller().limit(limits=1) if scope is None else scope


_one_thread_lock = threading.Lock()
_ALREADY = contextlib.nullcontext(True)


def blas_on_one_thread():
    """Runs the body with the BLAS on one thread per call, for kernels that call it
    from several threads of their own at once (the count it had is restored
    after). Gives whether it could: False when the BLAS cannot be told or another
    caller holds the setting (the BLAS then keeps its threads). Inside this
    thread's every_blas_on_one_thread (a training step), which keeps every
    BLAS on one thread until it ends: True at once, nothing to set (0.4 us warm;
    with RangeThreads' lighter hand-offs, the recurrent benchmark's Numba step
    over C's, alternating in one process, medians of six processes, Zen 4: LSTM
    1.042 against 1.067, SimpleRNN 1.069 against 1.124)."""
    if _held.thread == threading.get_ident():
        return _ALREADY
    functions = blas_thread_functions()
    return _OneThreadScope(None if functions is None else [functions], _one_thread_lock)


@functools.cache
def blas_controller():
    """threadpoolctl's controller of the BLAS libraries loaded (NumPy's and
    SciPy's), made once: limiting through it costs microseconds, where
    threadpool_limits looks the libraries up again at each call."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")
