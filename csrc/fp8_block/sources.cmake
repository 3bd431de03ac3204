# Block-scaled FP8 (W8A8-FP8_BLOCK). Lowest arch first ("min" builds use it).
set(QK_FP8B_DIR ${CMAKE_CURRENT_SOURCE_DIR}/csrc/fp8_block/kernels)
# Per-token-group quantisation: plain CUDA (cuda_fp8.h conversions work on every arch; hardware
# cvt on sm89+), so any arch from Turing up.
qk_kernels(FAMILY fp8_block TAG QUANT ARCHS 75 80 86 89 90 SOURCES ${QK_FP8B_DIR}/group_quant.cu)
# The blockwise-scaled GEMM (CUTLASS 3.x, TMA + wgmma): sm_90a only. One kernel per file, written
# by kernels/generate.py. (The sm89 path is a Triton kernel: nothing to compile.)
file(GLOB QK_FP8B_SM90 CONFIGURE_DEPENDS ${QK_FP8B_DIR}/sm90_*.cu)
qk_kernels(FAMILY fp8_block TAG SM90 ARCHS 90a SOURCES ${QK_FP8B_SM90})
qk_glue(FAMILY fp8_block SOURCES csrc/fp8_block/fp8_block_torch.cpp)
