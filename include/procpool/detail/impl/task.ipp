// procpool internals: the definitions of detail/task.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/platform.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

PROCPOOL_DECL TaskRunner::TaskRunner(const TaskHeader& header, std::span<const std::byte> callable,
                                     std::span<const std::byte> items, ResultSink& sink, ProgressWords progress,
                                     Buffer& values, Buffer& errors, std::chrono::nanoseconds flush_interval)
    : task_id_(header.task_id), count_(header.item_count), timed_((header.flags & kTimedItems) != 0),
      callable_(callable), items_(items), sink_(sink), progress_(progress), own_values_(values), values_(&values),
      errors_(errors), flush_interval_ns_(flush_interval.count()) {
    values_->clear();
    errors_.clear();
    last_flush_ns_ = last_check_ns_ = monotonic_ns();
}

PROCPOOL_DECL void TaskRunner::fail_rest(std::uint32_t from) {
    for (std::uint32_t i = from; i < count_; ++i) record_error(i);
    current_ = count_ - 1;
}

PROCPOOL_DECL std::uint32_t TaskRunner::next_block(std::uint32_t index) {
    current_ = index;
    return index == first_unsent_ ? stride_ : look_at_clock();
}

PROCPOOL_DECL std::uint32_t TaskRunner::look_at_clock() {
    const std::int64_t now = monotonic_ns();
    if (now - last_flush_ns_ >= flush_interval_ns_) {
        send(now, false);
        stride_ = 1;
    } else {
        stride_ = now - last_check_ns_ < 2'000 ? std::min(stride_ * 2, kMaxStride) : 1;
    }
    last_check_ns_ = now;
    return stride_;
}

PROCPOOL_DECL void TaskRunner::record_error(std::uint32_t index) {
    OutputArchive ar(errors_);
    ar.write_bytes(&index, sizeof index);
    encode_current_exception(ar);
    ++error_count_;
}

PROCPOOL_DECL void TaskRunner::send(std::int64_t now, bool final) {
    const std::uint32_t end = final ? count_ : current_;
    ResultHeader header{task_id_,
                        first_unsent_,
                        end - first_unsent_,
                        error_count_,
                        final ? static_cast<std::uint32_t>(kFinalResult) : 0u,
                        static_cast<std::uint64_t>(now - last_flush_ns_),
                        errors_.size()};
    const Piece pieces[] = {{&header, sizeof header},
                            {errors_.data(), errors_.size()},
                            {values_->data(), values_->size()}};
    sink_.send_result(pieces, sizeof header + errors_.size() + values_->size());
    values_->clear();
    errors_.clear();
    error_count_ = 0;
    first_unsent_ = end;
    last_flush_ns_ = now;
}

}  // namespace procpool::detail
