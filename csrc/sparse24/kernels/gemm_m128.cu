// 2:4 sparse FP8 GEMM, M bucket kUpTo128 (config in sparse24_configs.cuh): bf16 and fp16 output.
#include "sparse24/kernels/sparse24_gemm.cuh"

QK_SPARSE24_DEFINE_BUCKET(kUpTo128, ConfigUpTo128)
