# `resa-bench kernels` (kernels_bench.cc, kernels_bench_gemv.cc): included by
# runtime/apps/CMakeLists.txt and by kernels/cuda/CMakeLists.txt (for the standalone
# resa-kernels-bench); defines the library once
# and links it into resa-bench at the end of the including directory, wherever the include sits.
if(NOT TARGET resa_kernels_bench)
  add_library(resa_kernels_bench STATIC ${CMAKE_CURRENT_LIST_DIR}/kernels_bench.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/kernels_bench_gemv.cc)
  resa_target_options(resa_kernels_bench)
  target_link_libraries(resa_kernels_bench PUBLIC CLI11::CLI11 absl::status absl::statusor
                        absl::strings absl::str_format nlohmann_json::nlohmann_json)
  if(RESA_HAVE_CUDA)
    target_link_libraries(resa_kernels_bench PUBLIC resa_kernels_cuda CUDA::cudart)
    target_compile_definitions(resa_kernels_bench PRIVATE RESA_KERNELS_BENCH_CUDA=1
      RESA_KERNELS_BENCH_SCRIPT="${PROJECT_SOURCE_DIR}/kernels/cuda/bench/sdpa_baseline.py")
    # --gemv needs the engine's CUDA model ops: resa_engine_cuda in the full build (defined later,
    # hence the generator expressions), resa_model_ops_cuda in the standalone one; and cuBLAS.
    if(TARGET resa_model_ops_cuda)
      set(_resa_gemv_ops resa_model_ops_cuda)
    else()
      set(_resa_gemv_ops resa_engine_cuda)
    endif()
    target_link_libraries(resa_kernels_bench PUBLIC CUDA::cublas
                          $<TARGET_NAME_IF_EXISTS:${_resa_gemv_ops}>)
    target_compile_definitions(resa_kernels_bench PRIVATE
      $<$<TARGET_EXISTS:${_resa_gemv_ops}>:RESA_KERNELS_BENCH_GEMV=1>)
  endif()
endif()

function(resa_link_kernels_bench)
  if(TARGET resa-bench)
    target_link_libraries(resa-bench PRIVATE resa_kernels_bench)
  endif()
endfunction()
if(CMAKE_CURRENT_SOURCE_DIR STREQUAL "${PROJECT_SOURCE_DIR}/runtime/apps")
  cmake_language(DEFER CALL resa_link_kernels_bench)
endif()
