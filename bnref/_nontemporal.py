"""The channels-last elementwise pass (forward y, backward dx) with non-temporal stores, for
outputs larger than the cache.

A regular store to a line that is not in cache reads the line from memory first (a read for
ownership), so writing n bytes of a large output moves 2n, and the lines it brings in evict
the x that the same pass is reading. A non-temporal store of a whole 64-byte line goes to
memory through a write-combining buffer: n bytes moved, nothing evicted.

LLVM does not vectorize a loop of non-temporal scalar stores whose alignment it cannot prove
(it emits one ``movntss`` per value), and computing into a scratch buffer that is then streamed
out loses more than it saves (measured). So :func:`line_nt` computes one 64-byte line of
``y = k_x*(x - mean) + k_u*u + k_0`` as a vector, with the same operations as the scalar code
(widen to float64, subtract, FMA, round to the output's dtype: the same bits), and stores it
non-temporally; :func:`bnref._kernels.combine` drives it a block at a time and ends each block
with :func:`fence`. Measured after a read of x (float32, 2 threads): (25088, 256) 1.44 ms against
2.48 ms with regular stores; (200704, 64) 2.54 against 3.13 ms.

Numba's on-disk cache of :func:`bnref._kernels.combine`, which inlines this code, is keyed on
``_kernels.py`` only: after editing this file, remove the ``.nbi``/``.nbc`` files in
``bnref/__pycache__`` (a fresh install has none).
"""
from __future__ import annotations

import platform

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: bytes per cache line, and per non-temporal vector store
LINE = 64
#: whether this is an x86 machine (its ``sfence`` orders non-temporal stores)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def line_nt(typingctx, xf, of, i, mu, kx, k0, u, uf, ku, j):
    """``of[i: i + n] = kx*(xf[i: i + n] - mu) + ku*uf[i: i + n] + k0`` for the n = 64/itemsize
    values of one line (the coefficients' slices from j; ``u`` None drops the ``uf`` term, and
    ``uf`` is then any array of the dtype), stored non-temporally; ``of + i`` must be 64-byte
    aligned.

    The operations are those of the scalar loop, in its order and with its one fastmath flag
    (``contract``), so LLVM fuses the same multiply-adds and the bits are the same."""
    if not (all(isinstance(a, types.Array) and a.dtype == of.dtype for a in (xf, of, uf))
            and of.dtype in (types.float32, types.float64)):
        return None
    has_u = not isinstance(u, types.NoneType)

    def codegen(context, builder, sig, args):
        x_t, o_t, _, m_t, k_t, b_t, _, u_t, ku_t, _ = sig.args
        index, line = args[2], args[9]

        def pointer(ty, value, at, vector):
            array = context.make_array(ty)(context, builder, value)
            item = cgutils.get_item_pointer(context, builder, ty, array, [at], wraparound=False)
            return builder.bitcast(item, vector.as_pointer())

        elem = context.get_data_type(o_t.dtype)
        lanes = LINE // context.get_abi_sizeof(elem)
        values, doubles = ir.VectorType(elem, lanes), ir.VectorType(ir.DoubleType(), lanes)
        wide = o_t.dtype == types.float32
        flags = ("contract",)

        def load(ty, value, at, vector):
            loaded = builder.load(pointer(ty, value, at, vector), align=1)
            return builder.fpext(loaded, doubles) if wide and vector is values else loaded

        x = load(x_t, args[0], index, values)
        y = builder.fmul(load(k_t, args[4], line, doubles),
                         builder.fsub(x, load(m_t, args[3], line, doubles), flags=flags), flags=flags)
        if has_u:
            uv = load(u_t, args[7], index, values)
            y = builder.fadd(y, builder.fmul(load(ku_t, args[8], line, doubles), uv, flags=flags), flags=flags)
        y = builder.fadd(y, load(b_t, args[5], line, doubles), flags=flags)
        if wide:
            y = builder.fptrunc(y, values)
        store = builder.store(y, pointer(o_t, args[1], index, values), align=LINE)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(xf, of, i, mu, kx, k0, u, uf, ku, j), codegen


@intrinsic
def fence(typingctx):
    """Order this thread's non-temporal stores before what follows: ``sfence`` on x86 (LLVM
    lowers a plain ``fence`` there to a locked instruction, whose ordering of non-temporal
    stores the vendors document less plainly), LLVM's ``fence seq_cst`` elsewhere."""
    def codegen(context, builder, sig, args):
        if _X86:
            sfence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                    "llvm.x86.sse.sfence")
            builder.call(sfence, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen
