// procpool: Python's multiprocessing.Pool for C++20. Include this header for the whole single-machine API.
//
//     procpool::Pool pool;                                    // one worker per CPU
//     std::vector<long> squares = pool.map([](long x) { return x * x; }, std::views::iota(0L, 1000L));
//
// The manual is docs/guide.md (and the other pages of docs/); README.md is the overview.
#pragma once

#include "procpool/async_result.hpp"
#include "procpool/containers.hpp"
#include "procpool/errors.hpp"
#include "procpool/imap.hpp"
#include "procpool/managed_segment.hpp"
#include "procpool/options.hpp"
#include "procpool/pipe.hpp"
#include "procpool/pool.hpp"
#include "procpool/progress.hpp"
#include "procpool/register_exception.hpp"
#include "procpool/serialize.hpp"
#include "procpool/shared.hpp"
#include "procpool/sync.hpp"
