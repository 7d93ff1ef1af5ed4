"""Non-temporal stores and prefetches for the numba backend, which Numba's loops
cannot ask for (csrc/common.h's stream_copy and prefetch_lines_l2 are the C
backend's).

A plain store first reads its cache line from memory (write-allocate); a
non-temporal store of a whole 64-byte line does not, and does not evict what
is in the caches. A pass that reads one array and writes another as large
(batch norm's normalising pass over x into y) then moves two arrays' bytes,
not three: it computes a piece of a row into a small buffer that stays in L1,
then streams that out (stream_copy). LLVM only emits the vector non-temporal store for an aligned
vector, so the intrinsic writes one 64-byte line as a vector, and stream_copy
writes the unaligned head and tail of a row with plain stores.
"""

import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LINE = 64  # bytes
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")

jit_inline = njit(cache=True, error_model="numpy", inline="always")


def _data(context, builder, array_type, value):
    return cgutils.create_struct_proxy(array_type)(context, builder, value=value).data


@intrinsic
def stream_line(typingctx, dst, i, src, k):
    """dst[i:i + 64 bytes] = src[k:k + 64 bytes] with a non-temporal store; the
    address of dst[i] is a multiple of 64 (1-D arrays of one float dtype, dst
    contiguous)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.layout == "C" and dst.dtype == src.dtype
            and dst.dtype in (types.float32, types.float64)):
        return None

    def codegen(context, builder, sig, args):
        da, ia, sa, ka = args
        elem = context.get_data_type(sig.args[0].dtype)
        vec = ir.VectorType(elem, LINE // (4 if sig.args[0].dtype == types.float32 else 8))
        src_ptr = builder.gep(_data(context, builder, sig.args[2], sa), [ka])
        dst_ptr = builder.gep(_data(context, builder, sig.args[0], da), [ia])
        value = builder.load(builder.bitcast(src_ptr, vec.as_pointer()), align=4)
        store = builder.store(value, builder.bitcast(dst_ptr, vec.as_pointer()), align=LINE)
        store.set_metadata("nontemporal",
                           builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return types.none(dst, types.intp, src, types.intp), codegen


@intrinsic
def stream_fence(typingctx):
    """Orders this thread's non-temporal stores before its later stores: sfence
    on x86 (a plain fence does not order them there), a full fence elsewhere."""
    def codegen(context, builder, sig, args):
        if X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.none(), codegen


@jit_inline
def stream_copy(dst, src, n):
    """dst[:n] = src[:n] (1-D, C-contiguous), whole aligned lines of dst with
    non-temporal stores; the caller ends its stores with stream_fence."""
    per_line = LINE // dst.itemsize
    head = (-(dst.ctypes.data % LINE) % LINE) // dst.itemsize
    head = min(head, n) if dst.ctypes.data % dst.itemsize == 0 else n
    for j in range(head):
        dst[j] = src[j]
    j = head
    while j + per_line <= n:
        stream_line(dst, j, src, j)
        j += per_line
    for t in range(j, n):
        dst[t] = src[t]


@intrinsic
def _prefetch_l2(typingctx, a, offset):
    """Asks for the cache line holding byte `offset` of array a's data, into the
    second-level cache (llvm.prefetch: a hint, it never faults)."""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        byte = ir.IntType(8).as_pointer()
        address = builder.gep(builder.bitcast(_data(context, builder, sig.args[0], args[0]), byte), [args[1]])
        i32 = ir.IntType(32)
        # (LLVM names the intrinsic by its pointer type, p0 or p0i8 by version: the
        # bare name is renamed to the right one when the module is parsed)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]), "llvm.prefetch")
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(a, types.intp), codegen


@jit_inline
def prefetch_l2(a, start, count):
    """Asks for the lines of elements [start, start + count) of C-contiguous `a`
    (a row of it, say) into the second-level cache."""
    for offset in range(start * a.itemsize, (start + count) * a.itemsize, LINE):
        _prefetch_l2(a, offset)


@intrinsic
def element_pointer(typingctx, a, start):
    """A pointer to element `start` of C-contiguous array a's data, flat (no
    bounds check): what a row function takes (numba.carray(pointer, length))
    where a view would pass seven fields, and count a reference to its array."""
    if not (isinstance(a, types.Array) and a.layout == "C" and isinstance(start, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]])
    return types.CPointer(a.dtype)(a, start), codegen
