// procpool internals: the definitions of procpool/options.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <stdexcept>

#include "procpool/options.hpp"

namespace procpool::detail {

PROCPOOL_DECL void validate(const PoolOptions& options) {
    if (options.processes && *options.processes == 0) {
        throw std::invalid_argument("procpool: a pool needs at least one process (processes must not be 0)");
    }
    if (options.max_tasks_per_child && *options.max_tasks_per_child == 0) {
        throw std::invalid_argument("procpool: max_tasks_per_child must be at least 1 (or nullopt for no limit)");
    }
    if (options.task_timeout && options.task_timeout->count() <= 0) {
        throw std::invalid_argument("procpool: task_timeout must be positive (or nullopt for no limit)");
    }
    if (options.memory_limit && *options.memory_limit == 0) {
        throw std::invalid_argument("procpool: memory_limit must be positive (or nullopt for no limit)");
    }
    if (options.ring_bytes < 4096 || (options.ring_bytes & (options.ring_bytes - 1)) != 0) {
        throw std::invalid_argument("procpool: ring_bytes must be a power of two of at least 4096");
    }
}

}  // namespace procpool::detail
