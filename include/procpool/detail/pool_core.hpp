// procpool internals: what a pool is made of, shared by the Pool object and the imap ranges it returns.
//
// Header-only (the default), every file that uses a fork pool instantiates its scheduler, and with it the fork
// transport, the worker loop and the fork server. In the separately compiled mode (detail/config.hpp) the fork
// pool's core is instantiated once, in procpool::compiled (detail/impl/pool_core.ipp): its users' files see the
// same classes, and the extern templates below keep them from compiling their members.
#pragma once

#include <utility>

#include "procpool/detail/config.hpp"
#include "procpool/detail/fork_transport.hpp"
#include "procpool/detail/scheduler.hpp"

namespace procpool::detail {

template <class Transport>
struct PoolCore {
    // Out of the class, so that an extern template leaves them out of the users' files too (see the end).
    PoolCore(typename Transport::Config transport_config, SchedulerSettings settings);
    ~PoolCore();
    PoolCore(const PoolCore&) = delete;
    PoolCore& operator=(const PoolCore&) = delete;

    Transport transport;             // built first: forks the fork server and the workers
    Scheduler<Transport> scheduler;  // then the service thread
};

template <class Transport>
PoolCore<Transport>::PoolCore(typename Transport::Config transport_config, SchedulerSettings settings)
    : transport(std::move(transport_config)), scheduler(transport, settings) {}

template <class Transport>
PoolCore<Transport>::~PoolCore() = default;

#ifdef PROCPOOL_SEPARATE_COMPILATION
// Compiled once, in procpool::compiled.
extern template class Scheduler<ForkTransport>;
extern template struct PoolCore<ForkTransport>;
#endif

}  // namespace procpool::detail
