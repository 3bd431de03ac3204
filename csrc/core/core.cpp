// The library's one always-present source. Families add their kernels (.cu) and
// torch glue (*_torch.cpp) through csrc/<family>/sources.cmake.
extern "C" const char* qkernels_library_tag() { return "qkernels"; }
