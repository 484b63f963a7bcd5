// procpool: Python's multiprocessing.Pool for C++20. Include this header for the whole single-machine API.
//
//     procpool::Pool pool;                                    // one worker per CPU
//     std::vector<long> squares = pool.map([](long x) { return x * x; }, std::views::iota(0L, 1000L));
//
// The manual is docs/guide.md (and the other pages of docs/); README.md is the overview.
//
// In the separately compiled mode (PROCPOOL_SEPARATE_COMPILATION, docs/guide.md "Compile time") this header only
// declares ManagedSegment: it is the one class that needs Boost.Interprocess' heavy headers, so the files that use
// it include <procpool/managed_segment.hpp> themselves.
#pragma once

#include "procpool/detail/config.hpp"

#include "procpool/async_result.hpp"
#include "procpool/containers.hpp"
#include "procpool/errors.hpp"
#include "procpool/imap.hpp"
#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/managed_segment.hpp"
#else
namespace procpool {
class ManagedSegment;  // separately compiled mode: #include <procpool/managed_segment.hpp> to use ManagedSegment
}  // namespace procpool
#endif
#include "procpool/options.hpp"
#include "procpool/pipe.hpp"
#include "procpool/pool.hpp"
#include "procpool/progress.hpp"
#include "procpool/register_exception.hpp"
#include "procpool/serialize.hpp"
#include "procpool/shared.hpp"
#include "procpool/sync.hpp"
