// procpool internals: what a pool is made of, shared by the Pool object and the imap ranges it returns.
#pragma once

#include <utility>

#include "procpool/detail/scheduler.hpp"

namespace procpool::detail {

template <class Transport>
struct PoolCore {
    PoolCore(typename Transport::Config transport_config, SchedulerSettings settings)
        : transport(std::move(transport_config)), scheduler(transport, settings) {}

    Transport transport;             // built first: forks the fork server and the workers
    Scheduler<Transport> scheduler;  // then the service thread
};

}  // namespace procpool::detail
