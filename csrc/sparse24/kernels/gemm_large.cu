// 2:4 sparse FP8 GEMM, kernel sparse24_large (config ConfigLarge in sparse24_configs.cuh): bf16 and fp16 output.
#include "sparse24/kernels/sparse24_gemm.cuh"

QK_SPARSE24_KERNEL(sparse24_large, ConfigLarge)
