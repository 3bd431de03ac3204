// 2:4 sparse FP8 GEMM, kernel sparse24_large_k256 (config ConfigLargeK256 in sparse24_configs.cuh): bf16 and
// fp16 output. A tuner candidate for M > 128; not in the compiled-in default table.
#include "sparse24/kernels/sparse24_gemm.cuh"

QK_SPARSE24_KERNEL(sparse24_large_k256, ConfigLargeK256)
