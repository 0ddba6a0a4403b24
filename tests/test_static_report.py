"""The pure parts of python/static_report.py (the static per-kernel report of issue 13): its bytes models, the ATen
op tree walk, and the main-loop reading of a captured SASS listing. The full report (`make static-report`) needs an
sm_90 build and minutes; it is not run here."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from python import static_report as sr  # noqa: E402

from mae_kernels.triton import compile_check as cc  # noqa: E402

# cuobjdump -sass lines in its own format: a loop of two 2-byte copies (0x0100..0x0180, a backward branch), an
# unrolled one of eight 16-byte copies (0x0200..0x0300) and a 5-digit address (kernels past 64 KiB of code).
_SASS = """
        code for sm_90
                Function : _Z4copyPKtPt
        .headerflags    @"EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                        /* 0x00000a00ff017b82 */
                                                                                  /* 0x000fe40000000800 */
        /*0100*/                   LDS R4, [R2] ;                                 /* 0x0000000002047984 */
        /*0110*/                   LDG.E.U16.CONSTANT R5, desc[UR4][R6.64] ;      /* 0x0000000406057981 */
        /*0120*/                   IADD3 R2, R2, 0x4, RZ ;                        /* 0x0000000402027810 */
        /*0130*/                   LDG.E.U16.CONSTANT R8, desc[UR4][R10.64] ;     /* 0x000000040a087981 */
        /*0140*/                   STG.E.U16 desc[UR4][R12.64], R5 ;              /* 0x000000050c007986 */
        /*0150*/                   STG.E.U16 desc[UR4][R14.64], R8 ;              /* 0x000000080e007986 */
        /*0160*/                   NOP ;                                          /* 0x0000000000007918 */
        /*0170*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;              /* 0x000000030200720c */
        /*0180*/              @!P0 BRA 0x100 ;                                    /* 0xfffffff000008947 */
        /*0200*/                   LDG.E.128 R16, desc[UR4][R6.64] ;              /* 0x0000000406107981 */
        /*0210*/                   LDG.E.128 R20, desc[UR4][R6.64+0x10] ;         /* 0x0000000406147981 */
        /*0220*/                   STG.E.128 desc[UR4][R12.64], R16 ;             /* 0x000000100c007986 */
        /*0230*/                   STG.E.128 desc[UR4][R12.64+0x10], R20 ;        /* 0x000000140c007986 */
        /*0300*/               @P1 BRA 0x200 ;                                    /* 0xffffffec00241947 */
        /*10a70*/                  EXIT ;                                         /* 0x000000000000794d */
"""


def test_sass_listing_and_main_loop():
    listing = cc.parse_sass_listing(_SASS)[("sm_90", "_Z4copyPKtPt")]
    assert listing[0] == (0, "LDC", "R1, c[0x0][0x28]") and listing[-1] == (0x10a70, "EXIT", "")
    assert cc.parse_sass(_SASS)[("sm_90", "_Z4copyPKtPt")][1:3] == ["LDS", "LDG.E.U16.CONSTANT"]
    assert [cc.sass_access_bytes(op) for op in ("LDG.E.128.CONSTANT", "STG.E.U16", "LDG.E.64", "LDG.E")] == [
        16, 2, 8, 4]
    # The widest loop is the main one, unless each thread has fewer elements than its iteration moves.
    wide = sr.loop_facts(listing, 2)
    assert (wide["loop_instructions"], wide["load_width"], wide["store_width"], wide["instr_per_element"]) == (
        5, 16, 16, round(5 / 16, 2))
    narrow = sr.loop_facts(listing, 2, max_elements=3)
    assert (narrow["loop_instructions"], narrow["load_width"], narrow["instr_per_element"]) == (8, 2, 4.0)
    assert narrow["in_flight_bytes"] == 4 and narrow["loads_per_iteration"] == 2
    # load_side: elements counted on the loads (reductions)
    assert sr.loop_facts(listing, 4, load_side=True)["instr_per_element"] == round(5 / 8, 2)


class _Event:
    def __init__(self, name, start, dur, shapes=(), dtypes=()):
        self._n, self._s, self._d, self._sh, self._dt = name, start, dur, list(shapes), list(dtypes)

    def name(self):
        return self._n

    def start_ns(self):
        return self._s

    def duration_ns(self):
        return self._d

    def shapes(self):
        return self._sh

    def dtypes(self):
        return self._dt


def test_op_tree_counts_the_outermost_computing_ops():
    events = [
        _Event("mae_kernels::masked_patchify", 0, 100),
        _Event("aten::empty", 1, 2, [[]], ["ScalarList"]),
        _Event("aten::zeros", 10, 20),
        _Event("aten::empty", 11, 2),
        _Event("aten::zero_", 14, 5, [[4, 8]], ["float"]),
        _Event("aten::fill_", 15, 3, [[4, 8], []], ["float", "Scalar"]),  # zero_'s own child: not counted again
        _Event("aten::matmul", 40, 20),
        _Event("aten::mm", 41, 15, [[4, 8], [8, 16]], ["c10::BFloat16", "c10::BFloat16"]),
        _Event("aten::resolve_conj", 42, 1, [[4, 8]], ["c10::BFloat16"]),
        _Event("triton::_copy_kernel", 70, 10),
        _Event("aten::copy_", 72, 2, [[4], [4]], ["float", "float"]),  # inside the interpreter: not a launch
        _Event("aten::_local_scalar_dense", 90, 2, [[]], ["float"]),
        _Event("aten::to", 95, 1, [[4, 8]], ["float"]),  # returns self: no child, no kernel
        _Event("aten::copy_", 200, 5, [[4, 8], [4, 8]], ["float", "c10::BFloat16"]),
    ]
    kernels, syncs = sr.kernels_of(sr._tree(events))
    assert kernels == [("aten", "aten::zero_", 0, 128, 0, "/mae_kernels::masked_patchify/aten::zeros"),
                       ("aten", "aten::mm", (32 + 128) * 2, 64 * 2, 2 * 32 * 16,
                        "/mae_kernels::masked_patchify/aten::matmul"),
                       ("triton", "_copy_kernel", 0, 0, 0, "/mae_kernels::masked_patchify"),
                       ("aten", "aten::copy_", 64, 128, 0, "")]
    assert syncs == 1


def test_aten_bytes():
    assert sr.aten_bytes("aten::index_select", [[197, 768], [], [12544]], ["float", "Scalar", "long int"]) == (
        12544 * 768 * 4 + 12544 * 8, 12544 * 768 * 4, 0)
    assert sr.aten_bytes("aten::add", [[2, 3, 4], [1, 1, 4]], ["float", "float"]) == (112, 96, 0)
    assert sr.aten_bytes("aten::sum", [[10, 4]], ["float"]) == (160, 8, 0)
    assert sr.aten_bytes("aten::stack", [[]], ["TensorList"]) == (0, 0, 0)
    assert sr.aten_bytes("aten::mul", [[4, 8], [1], [4, 8]], ["c10::BFloat16", "float", "c10::BFloat16"]) == (
        68, 64, 0)  # out=


def test_bytes_models_match_the_minimum_where_the_kernel_is_the_minimum():
    """The gather moves exactly the benchmark's minimum; the scatter's model plus the zero fill is its minimum."""
    models = sr.kernel_bytes()
    gather = models["copy_patches_kernel<false"]
    assert gather[0] + gather[1] == sr.case_bytes("masked_patchify")["forward"]
    scatter = models["copy_patches_kernel<true"]
    image = sr.N * sr.C * sr.HW * sr.HW * sr.BF16
    assert scatter[0] + scatter[1] - scatter[1] + image == sr.case_bytes("masked_patchify")["backward"]
    assert sr.model_for("void mae_kernels::copy_patches_kernel<true, unsigned short, 256>", models) == \
        "copy_patches_kernel<true"
    assert sr.model_for("_copy_kernel[TO_IMAGE=True]", models) == "_copy_kernel[TO_IMAGE=True]"
    assert sr.model_for("aten::mm", models) is None


def test_prediction_bounds():
    facts = dict(instr_per_element=1.0, in_flight_bytes=16)
    t, bound, hiding = sr.predict(3e9, 3e9, 0, 1e6, facts, 8, 10**6, 256)
    assert bound == "memory" and hiding == 1.0 and abs(t - 2e-3) < 1e-9
    # Integer-bound: 1000 instructions per element of 1e9 elements.
    t, bound, _ = sr.predict(3e9, 0, 0, 1e9, dict(facts, instr_per_element=1000), 8, 10**6, 256)
    assert bound == "issue" and abs(t - 1e12 / sr.ISSUE_RATE) < 1e-9
    # Too few bytes in flight: 2 bytes per thread, one block of 256 threads per SM.
    _, bound, hiding = sr.predict(3e9, 0, 0, 1, dict(facts, in_flight_bytes=2), 1, 10**6, 256)
    assert bound.startswith("latency") and abs(hiding - 512 / sr.IN_FLIGHT_PER_SM) < 1e-12
    assert sr.predict(10, 10, 0, 1, None, 0, 0, 0)[1] == "launch floor"


def test_syncs_inside_a_counted_host_read_are_not_counted_twice():
    """int(t) is one read: _count_host_reads counts it and wraps it in a HOST_READ range, whose aten::item the tree
    walk then skips (the Triton random_masking forward's seed read was counted twice, once left after the dropped
    randint's)."""
    events = [_Event("aten::randint", 0, 5, [[1]], ["long int"]),
              _Event(sr.HOST_READ, 10, 10),
              _Event("aten::item", 11, 8, [[1]], ["long int"]),
              _Event("aten::_local_scalar_dense", 12, 5, [[1]], ["long int"]),
              _Event("aten::item", 30, 2, [[1]], ["float"])]  # a C++-side read: counted
    assert sr.kernels_of(sr._tree(events))[1] == 1


def test_host_reads_are_counted_once(monkeypatch):
    import torch
    from torch.profiler import ProfilerActivity, profile

    for attr in ("tolist", "item", "__int__", "__float__", "__bool__", "__index__"):  # restored after the test
        monkeypatch.setattr(torch.Tensor, attr, getattr(torch.Tensor, attr))
    reads = sr._count_host_reads()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        int(torch.randint(0, 10, (1,)))
        torch.arange(3).tolist()
    assert reads[0] == 2 and sr.kernels_of(sr._tree(prof.profiler.kineto_results.events()))[1] == 0


def test_masked_patch_embed_backward_cpu_only_casts_are_not_counted():
    """The backward's _matmul runs bf16 as an fp32 GEMM on CPU only (a GPU runs one bf16 GEMM): its casts are
    dropped with the reason, its GEMM counted at bf16 bytes; the cast of the fp32 gradient to the GEMM dtype and
    the bias sum, which a GPU runs too, stay."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import mae_kernels
    from mae_kernels.ops import masked_patch_embed as mpe

    assert sr.CPU_FP32_GEMM == mpe.CPU_FP32_GEMM
    imgs = torch.randn(2, 3, 8, 8).bfloat16()
    weight = torch.randn(16, 3, 2, 2).bfloat16().requires_grad_()
    bias = torch.randn(16).bfloat16().requires_grad_()
    ids_keep = torch.stack([torch.randperm(16)[:4] for _ in range(2)])
    with mae_kernels.use_backend("cpu"):
        out = mae_kernels.masked_patch_embed(imgs, ids_keep, weight, bias, torch.randn(1, 17, 16))
    grad = torch.ones_like(out)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out.backward(grad)
    kernels = [dict(kind=k[0], name=k[1], read=k[2], written=k[3], flops=k[4], within=k[5])
               for k in sr.kernels_of(sr._tree(prof.profiler.kineto_results.events()))[0]]
    for backend in ("cuda", "triton"):
        reasons = [sr.host_path_only("masked_patch_embed", backend, k) for k in kernels]
        dropped = [k["name"] for k, why in zip(kernels, reasons) if why]
        assert dropped == ["aten::copy_"] * 3, dropped  # both operands up, the product down
        assert all("_matmul" in why for why in reasons if why)
        kept = [k for k, why in zip(kernels, reasons) if not why]
        # grad_W's GEMM and layout copy: what a GPU runs too (grad's bf16 copy and the bias sum are one kernel of
        # masked_patch_embed_bias_grad, not ATen's)
        assert [k["name"] for k in kept if k["kind"] == "aten"] == ["aten::mm", "aten::copy_"]
        (mm,) = [k for k in kept if k["name"] == "aten::mm"]
        assert sr.gpu_gemm_bytes("masked_patch_embed", backend, mm)["read"] == mm["read"] // 2
    # The forward's addmm runs fp32 on CPU for the cuda path only; other GEMMs are left alone.
    addmm = dict(kind="aten", name="aten::addmm", read=100, written=40, flops=0, within="/mae_kernels::x")
    assert sr.gpu_gemm_bytes("masked_patch_embed", "cuda", addmm)["read"] == 50
    assert sr.gpu_gemm_bytes("masked_patch_embed", "triton", addmm)["read"] == 100
    assert sr.gpu_gemm_bytes("masked_patch_embed", "cuda", dict(addmm, name="aten::mm"))["read"] == 100
