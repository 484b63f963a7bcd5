// procpool internals: header-only (the default) or separately compiled.
//
// Define PROCPOOL_SEPARATE_COMPILATION in every translation unit of a program (the procpool::compiled CMake target
// does it for its users) and compile procpool/src.hpp in exactly one of them (procpool::compiled does that too):
// the code that does not depend on your types (the fork pool's scheduler and transport, the worker loop, the fork
// server, what carries values and errors...) is then compiled once, in that file, instead of in every file that uses
// a pool. A program must not mix the two modes.
#pragma once

#if defined(PROCPOOL_SEPARATE_COMPILATION)
/// Declares a function that procpool/src.hpp defines (once, in procpool::compiled).
#define PROCPOOL_DECL
#else
#define PROCPOOL_HEADER_ONLY 1
/// Declares a function defined in the headers (header-only mode): inline.
#define PROCPOOL_DECL inline
#endif

// Sanitizer builds, as GCC (__SANITIZE_*__) and clang (__has_feature) say it: fast paths that the sanitizers cannot
// see through step aside for them (detail/stream_copy, detail/block_recycler).
#if defined(__SANITIZE_ADDRESS__)
#define PROCPOOL_DETAIL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROCPOOL_DETAIL_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define PROCPOOL_DETAIL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PROCPOOL_DETAIL_TSAN 1
#endif
#endif
