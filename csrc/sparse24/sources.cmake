# 2:4 sparse FP8 GEMM + compressor. CUTLASS 3.x sm90 sparse tensor-op kernels: sm_90a only
# (wgmma.sp). One kernel file per tile config (kernels/sparse24_configs.cuh), each with the
# bf16 and fp16 output instantiations; the glue registers them as the candidates of the
# dispatch key sparse24/sm90/fp8. The compressor is plain CUDA but writes a format only these
# kernels read, so it lives in the same group.
qk_kernels(FAMILY sparse24 TAG SM90 ARCHS 90a SOURCES
  csrc/sparse24/kernels/compress.cu
  csrc/sparse24/kernels/gemm_m32.cu
  csrc/sparse24/kernels/gemm_m128.cu
  csrc/sparse24/kernels/gemm_large.cu
  csrc/sparse24/kernels/gemm_large_k256.cu)
qk_glue(FAMILY sparse24 SOURCES csrc/sparse24/sparse24_torch.cpp)
