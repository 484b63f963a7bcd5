// procpool's separately compiled part. Include this header in exactly one translation unit of a program that
// defines PROCPOOL_SEPARATE_COMPILATION in all of them (src/procpool.cpp, built into the procpool::compiled CMake
// target, is that translation unit). See detail/config.hpp.
#pragma once

#ifndef PROCPOOL_SEPARATE_COMPILATION
#error "procpool/src.hpp is the separately compiled part of procpool: define PROCPOOL_SEPARATE_COMPILATION"
#endif

// The fork pool's core (detail/pool_core.hpp), and what the headers declare with PROCPOOL_DECL: defined here once.
// (Header-only, each header includes its own .ipp file.)
#include "procpool/detail/impl/async_result.ipp"
#include "procpool/detail/impl/block_recycler.ipp"
#include "procpool/detail/impl/buffer.ipp"
#include "procpool/detail/impl/bulk_arena.ipp"
#include "procpool/detail/impl/demangle.ipp"
#include "procpool/detail/impl/exceptions.ipp"
#include "procpool/detail/impl/imap.ipp"
#include "procpool/detail/impl/jobs.ipp"
#include "procpool/detail/impl/options.ipp"
#include "procpool/detail/impl/pool_core.ipp"
#include "procpool/detail/impl/process.ipp"
#include "procpool/detail/impl/progress.ipp"
#include "procpool/detail/impl/progress_tracker.ipp"
#include "procpool/detail/impl/stack_check.ipp"
#include "procpool/detail/impl/stream_copy.ipp"
#include "procpool/detail/impl/task.ipp"
