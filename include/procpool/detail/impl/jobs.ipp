// procpool internals: the definitions of detail/jobs.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <cstddef>
#include <utility>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/jobs.hpp"
#include "procpool/detail/task.hpp"

namespace procpool::detail {

PROCPOOL_DECL JobBase::JobBase(TaskEntry task_entry, Buffer callable, std::size_t chunksize, bool presized_segments)
    : chunksize_(chunksize), presized_segments_(presized_segments), entry_(task_entry), callable_(std::move(callable)) {
}

PROCPOOL_DECL JobBase::~JobBase() = default;

}  // namespace procpool::detail
