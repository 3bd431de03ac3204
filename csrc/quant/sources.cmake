# Activation quantisation (FP8 e4m3 and INT8). Plain CUDA, no CUTLASS: any arch.
# The FP8 conversions use cuda_fp8.h, which works on every arch (hardware cvt on sm89+).
qk_kernels(FAMILY quant TAG ALL ARCHS 75 80 86 89 90 SOURCES
  csrc/quant/kernels/fp8_quant.cu
  csrc/quant/kernels/int8_quant.cu)
qk_glue(FAMILY quant SOURCES csrc/quant/quant_torch.cpp)
