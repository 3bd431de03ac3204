// One Hopper W4A16 GEMM: Config::kMedium, fp16 activations / scales / zeros / output.
#include "w4a16/kernels/sm90_w4a16_gemm.cuh"

QK_W4A16_HOPPER_KERNEL(sm90_w4a16_medium_f16, kMedium, kFloat16)
