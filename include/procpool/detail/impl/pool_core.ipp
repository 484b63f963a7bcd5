// procpool internals: the fork pool's core in the separately compiled mode (detail/pool_core.hpp), instantiated once
// by procpool/src.hpp. (Header-only, every file that uses a pool instantiates it and this file is not used.)
#pragma once

#ifndef PROCPOOL_SEPARATE_COMPILATION
#error "detail/impl/pool_core.ipp is part of procpool's separately compiled mode (see procpool/src.hpp)"
#endif

#include "procpool/detail/fork_transport.hpp"
#include "procpool/detail/pool_core.hpp"
#include "procpool/detail/scheduler.hpp"

namespace procpool::detail {

template class Scheduler<ForkTransport>;
template struct PoolCore<ForkTransport>;

}  // namespace procpool::detail
