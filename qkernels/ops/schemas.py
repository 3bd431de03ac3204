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
    # clamped to scale_ub. Returns (q, scale[M, 1]).
    "dynamic_per_token_scaled_fp8_quant": "(Tensor input, Tensor? scale_ub=None) -> (Tensor, Tensor)",
    # INT8 with a given per-tensor scale and optional per-tensor int32 zero point.
    "static_scaled_int8_quant": "(Tensor input, Tensor scale, Tensor? azp=None) -> Tensor",
    # INT8 symmetric, one scale per token. Returns (q, scale[M, 1]).
    "dynamic_scaled_int8_quant": "(Tensor input) -> (Tensor, Tensor)",
    # INT8 asymmetric, one scale and one int32 zero point per token. Returns (q, scale[M,1], azp[M,1]).
    "dynamic_scaled_int8_quant_azp": "(Tensor input) -> (Tensor, Tensor, Tensor)",
}
