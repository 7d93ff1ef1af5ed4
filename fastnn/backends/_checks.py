"""Argument validation shared by every backend.

Every public kernel method validates its arguments here before any backend's
implementation runs, so compiled code only ever sees C-contiguous arrays of the
right shape and dtype. Errors name the argument and say what was expected.
"""

import ctypes
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The boundary every buffer fastnn allocates starts on: a cache line, one AVX-512
# vector. NumPy aligns its arrays to 16 bytes only (large ones start 16 bytes
# into a page), and a row that starts mid-line makes every vector load and store
# of the kernels and of BLAS split across two lines. On an Intel Xeon with
# AVX-512 the LSTM benchmark's GEMMs alone took 108 us a sequence on arrays 16
# bytes past a line and 78 us on aligned ones; its training step 123-137 and
# 101 (bench/alignment.py: 105 and 76, and 126 and 94).
ALIGNMENT = 64


def empty(shape, dtype, min_bytes=0):
    """np.empty(shape, dtype), C-contiguous, its data on an ALIGNMENT-byte boundary
    (a view of a slightly larger byte buffer, which it keeps alive) when it holds
    min_bytes or more, else NumPy's own. About 1 us, np.empty's 0.2."""
    dtype = np.dtype(dtype)
    nbytes = (shape if isinstance(shape, (int, np.integer)) else math.prod(shape)) * dtype.itemsize
    if nbytes < min_bytes:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    # (the address through ctypes' c_char: 0.26 us, raw.ctypes.data's 0.9)
    return np.ndarray(shape, dtype, raw, -ctypes.addressof(ctypes.c_char.from_buffer(raw)) % ALIGNMENT)


# An output a public kernel call allocates (out=None) is aligned from this size:
# below it the call's time is its overhead (an activation of a (32, 7) batch: 3.0
# us with np.empty's output, 5.0 with empty's), above it the loads' and stores'.
OUTPUT_ALIGN_BYTES = 4096


def output_empty(shape, dtype):
    """The output buffer of a public kernel call: aligned from OUTPUT_ALIGN_BYTES on."""
    return empty(shape, dtype, OUTPUT_ALIGN_BYTES)


def zeros(shape, dtype):
    """np.zeros(shape, dtype) on an ALIGNMENT-byte boundary (see empty)."""
    a = empty(shape, dtype)
    a.fill(0)
    return a


def float_array(a, name, ndim=None, dtype=None, shape=None, min_ndim=None):
    """Return `a` as a C-contiguous, aligned float32/float64 array (a copy only if
    it was not), after checking its type, dtype and shape.

    ndim: required number of dimensions; min_ndim: at least that many;
    dtype: the dtype every float array of the call shares;
    shape: required shape (None entries match anything)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype} but this call works in {np.dtype(dtype)}; "
            "all float arrays of one call must share one dtype"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if min_ndim is not None and a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {a.shape}")
    if shape is not None and a.shape != shape:
        check_shape(a, name, shape)
    flags = a.flags
    if flags.c_contiguous and flags.aligned:
        return a
    return np.array(a, order="C")  # a copy: C-contiguous and aligned


def check_shape(a, name, shape):
    if len(shape) != a.ndim or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")


def state_array(a, name, like, like_name="param"):
    """An array updated in place (parameters, optimizer state, running statistics):
    no copy is possible, so it must already be C-contiguous, writeable, and of the
    same shape and dtype as `like`."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != like.dtype:
        raise TypeError(f"{name} must have dtype {like.dtype} like {like_name}, got {a.dtype}")
    if a.shape != like.shape:
        raise ValueError(f"{name} must have shape {like.shape} like {like_name}, got {a.shape}")
    flags = a.flags
    if not flags.c_contiguous:
        raise ValueError(f"{name} is updated in place and must be C-contiguous")
    if not flags.writeable:
        raise ValueError(f"{name} is updated in place and must be writeable")
    if not flags.aligned:  # compiled kernels may use aligned loads
        raise ValueError(f"{name} is updated in place and must be aligned to its dtype")
    return a


def out_array(out, name, shape, dtype):
    """An output buffer: allocated when None, else checked (exact shape, dtype,
    C-contiguous, writeable)."""
    if out is None:
        return output_empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not (out.flags.c_contiguous and out.flags.writeable and out.flags.aligned):
        raise ValueError(f"{name} must be C-contiguous, aligned to its dtype and writeable")
    return out


def unshared(written, *inputs, in_place_ok=False):
    """`inputs`, each replaced by a copy when it shares memory with an array in
    `written` (the output buffers of the call; None entries are skipped).

    Why: compiled kernels write an output while still reading their inputs (the
    loss kernels write grad over the row of logits they then read the label's
    logit from; a label overwritten by grad is then an index out of bounds), so an
    output that overlaps an input gives a wrong result, or worse. Reading a copy
    gives the result of the call with a fresh output, on every backend.
    in_place_ok: a kernel documented to work in place (the elementwise activations'
    forward, "y may be x" in csrc) keeps an input that is exactly one of the outputs."""
    outs = [o for o in written if o is not None]
    if _separate(outs + [a for a in inputs if a is not None]):
        return list(inputs)
    result = []
    for a in inputs:
        if a is not None and any(np.may_share_memory(a, o)  # bounds: exact when contiguous
                                 and not (in_place_ok and _same_memory(a, o)) for o in outs):
            a = a.copy()
        result.append(a)
    return result


def distinct(**written):
    """Raises ValueError when two arrays a call writes (outputs, and states updated
    in place; None entries skipped) share memory: the caller reads both back, so
    no copy can help, and which write lands last depends on the backend."""
    if _separate([a for a in written.values() if a is not None]):
        return
    items = [(name, a) for name, a in written.items() if a is not None]
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{name_a} and {name_b} must not share memory: both are written")


def _separate(arrays):
    """True when no two of `arrays` can share memory because each lies in a
    distinct array that owns its data (itself, or its base: NumPy's views point
    to the owner, as fastnn's aligned buffers do, see empty): the common case,
    decided in a few attribute reads (these checks run on every public call).
    False means: compare their bounds."""
    ids = set()
    for a in arrays:
        owner = a.base
        if owner is None:
            owner = a
        elif type(owner) is not np.ndarray or owner.base is not None:
            return False
        ids.add(id(owner))
    return len(ids) == len(arrays)


def _same_memory(a, b):
    """Both arrays (C-contiguous, checked) cover exactly the same elements."""
    return a is b or (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                      and a.shape == b.shape and a.dtype == b.dtype)


def labels_array(y, name, n_samples, n_classes):
    """Integer class labels, shape (n_samples,), each in [0, n_classes)."""
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(y).__name__}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},), got {y.shape}")
    if y.dtype == np.int64:  # one reduction: seen as uint64, a negative label is huge
        outside = n_samples and y.view(np.uint64).max() >= n_classes
    else:
        outside = n_samples and (y.min() < 0 or y.max() >= n_classes)
    if outside:
        bad = y[(y < 0) | (y >= n_classes)][0]
        raise ValueError(f"{name} holds label {bad}, outside [0, {n_classes}) for {n_classes} classes")
    return np.ascontiguousarray(y, dtype=np.int64)


def sample_weight_array(w, n_samples, dtype):
    """Optional per-sample weights: shape (n_samples,), finite, >= 0, positive sum."""
    if w is None:
        return None
    w = float_array(w, "sample_weight", dtype=dtype, shape=(n_samples,))
    if not np.isfinite(w).all():
        raise ValueError("sample_weight must be finite (found NaN or inf)")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    if n_samples and w.sum() <= 0:
        raise ValueError("sample_weight must have a positive sum")
    return w


def finite_targets(t, name):
    if not np.isfinite(t).all():
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return t


def real(value, name, low=None, high=None, low_open=False, high_open=False):
    """A finite real scalar within [low, high] (or open ends), returned as float."""
    if type(value) is not float:  # a float needs no conversion (the ABC check is slow)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def integer(value, name, low=None, high=None):
    if type(value) is not int:  # as in real()
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
        value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def choice(value, name, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")
    return value


# ---------------------------------------------------------------- convolution
def pair(value, name, low=0):
    """An int or a pair of ints (rows, columns), each >= low, as a tuple of two ints."""
    values = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                               for v in values):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < low for v in values):
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(values[0]), int(values[1])


def shape_tuple(shape, name, ndim):
    """A shape of `ndim` non-negative ints, as a tuple of ints."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of {ndim} ints, got {type(shape).__name__}")
    if len(shape) != ndim or any(isinstance(d, bool) or not isinstance(d, numbers.Integral)
                                 for d in shape):
        raise TypeError(f"{name} must be a tuple of {ndim} ints, got {shape!r}")
    if any(d < 0 for d in shape):
        raise ValueError(f"{name} must hold ints >= 0, got {tuple(shape)!r}")
    return tuple(int(d) for d in shape)


def index_array(a, name, shape):
    """An int32 or int64 index array of the given shape, C-contiguous and aligned
    (a copy only if it was not); its range is checked separately."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError(f"{name} must have dtype int32 or int64, got {a.dtype}")
    shape = tuple(shape)  # None: any size on that axis
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.array(a, order="C")
