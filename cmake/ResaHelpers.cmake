# Fuzz builds instrument all project code (coverage feedback for the parsers the fuzzers reach,
# sanitizers everywhere); the fuzz targets themselves link libFuzzer's main.
if(RESA_FUZZ)
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

# Shared target settings for project code: warnings are errors here, not in third-party code.
function(resa_target_options target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wno-missing-field-initializers>)
  # GCC 12 reports -Wrestrict false positives inside libstdc++ string concatenation (GCC PR 105329).
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>)
  endif()
  if(RESA_NATIVE)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  endif()
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR})
endfunction()

# resa_add_library(name SOURCES ... DEPS ...)
function(resa_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  resa_target_options(${name})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# resa_add_test(name SOURCES ... DEPS ... LABELS ...): a GoogleTest binary registered with ctest.
function(resa_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  if(NOT RESA_BUILD_TESTS)
    return()
  endif()
  add_executable(${name} ${ARG_SOURCES})
  resa_target_options(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  add_test(NAME ${name} COMMAND ${name} --gtest_brief=0)
  # OMP_WAIT_POLICY=passive: ctest runs tests side by side, and spinning OpenMP threads
  # oversubscribing the cores would make every parallel region wait for a descheduled thread.
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}"
                       ENVIRONMENT "RESA_SOURCE_DIR=${PROJECT_SOURCE_DIR};OMP_WAIT_POLICY=passive")
  if("gpu" IN_LIST ARG_LABELS)
    # Without a GPU every case skips with "no CUDA device: ..."; ctest reports the test as
    # skipped (not passed) so CPU-only runs never count GPU tests as passes.
    set_tests_properties(${name} PROPERTIES SKIP_REGULAR_EXPRESSION "no CUDA device")
  endif()
endfunction()

# resa_add_fuzzer(name SOURCE src DEPS ... CORPUS dir): libFuzzer target plus a short ctest run
# over the seed corpus (label fuzz).
function(resa_add_fuzzer name)
  cmake_parse_arguments(ARG "" "SOURCE;CORPUS" "DEPS" ${ARGN})
  if(NOT RESA_FUZZ)
    return()
  endif()
  add_executable(${name} ${ARG_SOURCE})
  resa_target_options(${name})
  target_compile_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  if(NOT TARGET resa_fuzzers)
    add_custom_target(resa_fuzzers)
  endif()
  add_dependencies(resa_fuzzers ${name})
  if(RESA_BUILD_TESTS)
    set(work ${CMAKE_BINARY_DIR}/fuzz/${name})
    add_test(NAME ${name}
             COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
                     ${CMAKE_SOURCE_DIR}/tests/fuzz/run_fuzzer.sh $<TARGET_FILE:${name}>
                     ${ARG_CORPUS} ${work})
    set_tests_properties(${name} PROPERTIES LABELS "fuzz" TIMEOUT 300)
  endif()
endfunction()

# resa_program(target): what every installed program links besides its libraries: the
# thread-stack fix of runtime/core/thread_stacks.cc (exported, so libraries bind to it).
function(resa_program target)
  target_sources(${target} PRIVATE $<TARGET_OBJECTS:resa_thread_stacks>)
  target_link_libraries(${target} PRIVATE ${CMAKE_DL_LIBS})
  target_link_options(${target} PRIVATE "LINKER:--export-dynamic-symbol=pthread_attr_setstacksize")
endfunction()
