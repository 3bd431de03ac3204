# W4A16 (INT4 weights x FP16/BF16 activations), Marlin-style: mma.sync m16n8k16 with bf16 needs
# sm80+; cp.async L2 cache hints need sm80+. Same code for every arch in the list (no wgmma).
qk_kernels(FAMILY w4a16 TAG SM80 ARCHS 80 86 89 90 SOURCES
  csrc/w4a16/kernels/gemm_f16.cu
  csrc/w4a16/kernels/gemm_bf16.cu
  csrc/w4a16/kernels/repack.cu)
qk_glue(FAMILY w4a16 SOURCES csrc/w4a16/w4a16_torch.cpp)
