"""Every ``torch.ops.qkernels.*`` schema, in one place.

The schemas are defined from Python (not from C++ ``TORCH_LIBRARY``) so that the
ops exist on a machine where the CUDA extension was not built: there they run on
their CPU reference implementation. The compiled library only adds ``CUDA``
implementations (``TORCH_LIBRARY_IMPL(qkernels, CUDA, m)`` in ``csrc/*/*_torch.cpp``),
and it is loaded after this module has run.

Conventions (shared with vLLM so engines can swap us in):
* activations ``a`` are row-major ``[M, K]``; GEMM weights ``b`` are given as the
  transposed weight, i.e. a column-major ``[K, N]`` view (``weight.t()`` of a
  row-major ``[N, K]`` tensor);
* scales are float32; per-tensor scales have shape ``[1]`` (``[]`` accepted);
* functional ops return new tensors, ``*_out`` ops write into ``out``.
"""

# name -> schema (without the op name). One comment per op says what it does.
SCHEMAS: dict[str, str] = {
    # ---------------------------------------------------------------- quant
    # FP8 e4m3 quantisation with a given per-tensor scale: q = sat(x / scale).
    "static_scaled_fp8_quant": "(Tensor input, Tensor scale) -> Tensor",
    # FP8 with a per-tensor scale computed from absmax(input) / 448. Returns (q, scale[1]).
    "dynamic_scaled_fp8_quant": "(Tensor input) -> (Tensor, Tensor)",
    # FP8 with one scale per token (row of the flattened [M, K] input), optionally
    # with the row's absmax clamped to scale_ub (scale <= scale_ub / 448). Returns (q, scale[M, 1]).
    "dynamic_per_token_scaled_fp8_quant": "(Tensor input, Tensor? scale_ub=None) -> (Tensor, Tensor)",
    # INT8 with a given per-tensor scale and optional per-tensor int32 zero point.
    "static_scaled_int8_quant": "(Tensor input, Tensor scale, Tensor? azp=None) -> Tensor",
    # INT8 symmetric, one scale per token. Returns (q, scale[M, 1]).
    "dynamic_scaled_int8_quant": "(Tensor input) -> (Tensor, Tensor)",
    # INT8 asymmetric, one scale and one int32 zero point per token. Returns (q, scale[M,1], azp[M,1]).
    "dynamic_scaled_int8_quant_azp": "(Tensor input) -> (Tensor, Tensor, Tensor)",
    # ---------------------------------------------------------------- scaled_mm
    # W8A8 GEMM: out[M, N] = a_scales * (b_scales * (a @ b)) + bias. a int8/fp8 [M, K] row-major,
    # b the same dtype [K, N] column-major (weight.t()); scales float32, 1 or M values (a), 1 or
    # N values (b); bias [N] of out_dtype (bfloat16/float16). K, N multiples of 16.
    "scaled_mm": "(Tensor a, Tensor b, Tensor a_scales, Tensor b_scales, ScalarType out_dtype, "
    "Tensor? bias=None) -> Tensor",
    "scaled_mm_out": "(Tensor(a!) out, Tensor a, Tensor b, Tensor a_scales, Tensor b_scales, "
    "Tensor? bias=None) -> ()",
    # INT8 with asymmetric activations: acc' = a @ b - azp_adj (per-tensor zero point folded into
    # azp_adj = azp * colsum(b)) or a @ b - azp[m] * azp_adj[n] (per token, azp_adj = colsum(b)).
    "scaled_mm_azp": "(Tensor a, Tensor b, Tensor a_scales, Tensor b_scales, ScalarType out_dtype, "
    "Tensor azp_adj, Tensor? azp=None, Tensor? bias=None) -> Tensor",
    "scaled_mm_azp_out": "(Tensor(a!) out, Tensor a, Tensor b, Tensor a_scales, Tensor b_scales, "
    "Tensor azp_adj, Tensor? azp=None, Tensor? bias=None) -> ()",
    # True if this install runs scaled_mm with `dtype` operands on a GPU of that capability (e.g. 90).
    "scaled_mm_supports": "(int device_capability, ScalarType dtype) -> bool",
    # ---------------------------------------------------------------- sparse24
    # 2:4 sparse weight [N, K] (fp8 e4m3, K % 128 == 0) -> (values [N, K/2], meta uint8
    # [K/128, ceil(N/64), 64, 16] in CUTLASS sm90 layout). Rejects non-2:4 input; never prunes.
    "sparse24_compress": "(Tensor w) -> (Tensor, Tensor)",
    # out[M, N] = a_scales * (b_scales * (a @ W^T)) + bias with W the compressed 2:4 weight,
    # computed as out^T = W_sparse . a^T (sm90a). Scales per tensor/token x per tensor/channel.
    "sparse24_scaled_mm": "(Tensor a, Tensor values, Tensor meta, Tensor a_scales, Tensor b_scales, "
    "ScalarType out_dtype, Tensor? bias=None) -> Tensor",
    # True if this install can run sparse24_scaled_mm on a GPU of that capability (e.g. 90).
    "sparse24_supported": "(int device_capability) -> bool",
    # ---------------------------------------------------------------- w4a16
    # Repack a compressed-tensors `pack-quantized` 4-bit weight (int32 [N, K/8], packed along K)
    # into the Marlin-style tiled layout int32 [K/16, 2N]; `perm` (int32 [K], act-order) first
    # reorders the K columns: kernel row k = checkpoint column perm[k].
    "w4a16_repack": "(Tensor weight_packed, Tensor? perm=None) -> Tensor",
    # out[..., N] = a[..., perm] @ dequant(b_q) (+ bias), fp32 accumulation, output in a's dtype.
    # a fp16/bf16 [..., K]; b_q from w4a16_repack; scales / zeros (zero-point nibbles, None for
    # symmetric uint4b8) [G, N] in a's dtype; group_size -1 (per channel), 32, 64 or 128. The
    # stream-K reduction workspace comes from torch's caching allocator (CUDA-graph safe).
    # `perm` must be a permutation of 0..K-1 (argsort(g_idx), as prepare_weight makes it): the GEMMs
    # do not range-check it per call (that would sync with the host); an index outside [0, K) makes
    # the CUDA gather fail with a device-side assert, which ends the CUDA context.
    "w4a16_gemm": (
        "(Tensor a, Tensor b_q, Tensor scales, Tensor? zeros, Tensor? perm, Tensor? bias, "
        "int size_n, int size_k, int group_size) -> Tensor"
    ),
    # ---------------------------------------------------------------- w4a16_hopper
    # The Hopper (sm90a) large-M path of W4A16: its own weight layout and GEMM.
    # Prepack a compressed-tensors `pack-quantized` 4-bit weight (int32 [N, K/8]) into int32
    # [K/16, N/16, 32]: 16x16 atoms in wgmma register-fragment order, two's-complement nibbles;
    # `perm` (int32 [K], act-order) first reorders K.
    "w4a16_hopper_prepack": "(Tensor weight_packed, Tensor? perm=None) -> Tensor",
    # out[..., N] = a[..., perm] @ dequant(b) (+ bias), dequant = q * s (+ z' = (8 - z) * s, the
    # additive zero term; None: symmetric), scales / zeros [G, N] in a's dtype, fp32 accumulation.
    # CUTLASS mixed-input wgmma kernel (TMA, warp-specialized); sm90 only. `perm`: as w4a16_gemm's.
    "w4a16_hopper_gemm": (
        "(Tensor a, Tensor b, Tensor scales, Tensor? zeros, Tensor? perm, Tensor? bias, "
        "int size_n, int size_k, int group_size) -> Tensor"
    ),
    # True if this install runs w4a16_hopper_gemm on a GPU of that capability (only 90).
    "w4a16_hopper_supported": "(int device_capability) -> bool",
    # ---------------------------------------------------------------- fp8_block
    # FP8 e4m3 with one float32 scale per token and group of group_size (64/128) elements of K:
    # dynamic (absmax/448, optionally rounded up to a power of two: scale_ue8m0) or static (scale:
    # [1] or [K/group_size]). Returns (q, s[..., K/group_size]); s row-major, or column-major with
    # stride(-1) = ceil(M/4)*4 (column_major_scales: the sm90 GEMM's TMA layout).
    "per_token_group_fp8_quant": "(Tensor input, int group_size=128, bool column_major_scales=False, "
    "bool scale_ue8m0=False, Tensor? scale=None) -> (Tensor, Tensor)",
    # Blockwise-scaled FP8 GEMM: a [M, K] e4m3 with a_scales [M, K/128] (per token and 128 of K),
    # b [K, N] = w.t() with b_scales [ceil(N/128), K/128] (per 128x128 weight block); scales applied
    # per 128-block of K in float32; bias [N]; bf16/fp16 out. sm90: CUTLASS; sm89: the Triton op below.
    "fp8_block_scaled_mm": "(Tensor a, Tensor b, Tensor a_scales, Tensor b_scales, ScalarType out_dtype, "
    "Tensor? bias=None) -> Tensor",
    # The sm89 (Ada) path of fp8_block_scaled_mm, a Triton kernel (CUDA impl registered from Python).
    "fp8_block_scaled_mm_triton": "(Tensor a, Tensor b, Tensor a_scales, Tensor b_scales, "
    "ScalarType out_dtype, Tensor? bias=None) -> Tensor",
    # True if this install runs fp8_block_scaled_mm on a GPU of that capability (e.g. 90).
    "fp8_block_scaled_mm_supports": "(int device_capability) -> bool",
}
