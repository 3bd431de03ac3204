# W4A16 (INT4 weights x FP16/BF16 activations), Marlin-style: mma.sync m16n8k16 with bf16 needs
# sm80+; cp.async L2 cache hints need sm80+. Same code for every arch in the list (no wgmma).
# One (activation dtype, zero-point mode) per file, its four M buckets inside.
qk_kernels(FAMILY w4a16 TAG SM80 ARCHS 80 86 89 90 SOURCES
  csrc/w4a16/kernels/gemm_f16_sym.cu
  csrc/w4a16/kernels/gemm_f16_zp.cu
  csrc/w4a16/kernels/gemm_bf16_sym.cu
  csrc/w4a16/kernels/gemm_bf16_zp.cu
  csrc/w4a16/kernels/repack.cu)
qk_glue(FAMILY w4a16 SOURCES csrc/w4a16/w4a16_torch.cpp)
# Hopper path (README "Hopper path"): CUTLASS 3.x mixed-input wgmma kernels, sm_90a only. One
# (tile config, activation dtype) per file; the prepack kernel writes the layout
# only these kernels read, so it lives in the same group.
file(GLOB QK_W4A16_SM90 CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/w4a16/kernels/sm90_*.cu)
qk_kernels(FAMILY w4a16 TAG SM90 ARCHS 90a SOURCES ${QK_W4A16_SM90})
qk_glue(FAMILY w4a16 SOURCES csrc/w4a16/w4a16_hopper_torch.cpp)
