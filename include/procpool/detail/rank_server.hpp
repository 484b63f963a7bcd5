// procpool internals: a group of workers behind one slot of a pool (detail/transport.hpp, WorkerGroups): an MPI rank,
// rank 0's own node included, running a fork pool of its own.
//
// The pool that sent a task sees one worker, the group. The group splits each task it receives among its workers with
// its own scheduler (so a crash, a timeout, max_tasks_per_child, memory_limit, the initializer and retries work as on
// one machine), and sends the results back as the sender expects them: in item order, a message per run of items
// finished, the last one final. A worker's crash or timeout comes back as that item's WorkerCrashed or TaskTimeout,
// naming the rank and host.
#pragma once

#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/jobs.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/errors.hpp"
#include "procpool/pool.hpp"

namespace procpool::detail {

/// Where a group's result messages go (to the rank that sent the tasks). Thread-safe; never blocks for long.
using ResultForwarder = std::function<void(Buffer message)>;

/// One task a group received, run as a job of the group's pool. Its results are forwarded in item order.
class ReceivedTaskJob final : public JobBase {
public:
    ReceivedTaskJob(TaskEntry task_entry, Buffer callable, std::uint64_t task_id, std::uint64_t items,
                    std::string where, std::shared_ptr<const ResultForwarder> forward)
        : JobBase(task_entry, std::move(callable), 0, false), task_id_(task_id), items_(items),
          where_(std::move(where)), forward_(std::move(forward)) {}

    void deliver(std::uint64_t first, std::uint64_t count, std::span<ItemError> errors, InputArchive& values,
                 std::uint64_t busy_ns) override {
        Run run;
        run.count = count;
        run.busy_ns = busy_ns;
        OutputArchive ar(run.errors);
        for (ItemError& error : errors) encode_item_error(ar, error.index - first, error.error);
        run.error_count = static_cast<std::uint32_t>(errors.size());
        const std::size_t left = values.remaining();
        run.values.append(values.take(left), left);
        finished(first, std::move(run));
    }

    void fail(std::uint64_t first, std::uint64_t count, const std::exception_ptr& error) override {
        Run run;
        run.count = count;
        OutputArchive ar(run.errors);
        for (std::uint64_t i = 0; i < count; ++i) encode_item_error(ar, i, error);
        run.error_count = static_cast<std::uint32_t>(count);
        finished(first, std::move(run));
    }

    [[nodiscard]] bool cancelled() const noexcept override { return false; }

private:
    /// The results of a run of items, encoded as a result message's parts.
    struct Run {
        std::uint64_t count = 0;
        std::uint32_t error_count = 0;
        std::uint64_t busy_ns = 0;
        Buffer errors;
        Buffer values;
    };

    /// Encodes `error` for the item `index` of a message; a crash or timeout of this group's worker names the group.
    void encode_item_error(OutputArchive& ar, std::uint64_t index, const std::exception_ptr& error) const {
        const auto at = static_cast<std::uint32_t>(index);
        ar.write_bytes(&at, sizeof at);
        try {
            std::rethrow_exception(error);
        } catch (const WorkerCrashed& e) {
            ErrorRecord record{ErrorKind::worker_crashed, "procpool::WorkerCrashed", {}, {}};
            const WorkerCrashed named(e.pid(), e.signal(), e.exit_code(), e.where().empty() ? where_ : e.where());
            record.message = named.what();
            record.payload = fields_payload({named.pid(), named.signal(), named.exit_code(), 0, named.where()});
            encode_error(ar, record);
        } catch (const TaskTimeout& e) {
            const TaskTimeout named(e.pid(), e.timeout(), e.where().empty() ? where_ : e.where());
            ErrorRecord record{ErrorKind::task_timeout, "procpool::TaskTimeout", named.what(), {}};
            record.payload = fields_payload({named.pid(), 0, 0, named.timeout().count(), named.where()});
            encode_error(ar, record);
        } catch (...) {
            encode_current_exception(ar);
        }
    }

    /// Records a finished run and forwards every run that is next in item order.
    void finished(std::uint64_t first, Run finished_run) {
        std::vector<Buffer> messages;
        {
            std::lock_guard lock(mutex_);
            pending_.emplace(first, std::move(finished_run));
            for (auto next = pending_.find(next_); next != pending_.end(); next = pending_.find(next_)) {
                Run& run = next->second;
                const bool final = next_ + run.count == items_;
                const ResultHeader header{task_id_,
                                          static_cast<std::uint32_t>(next_),
                                          static_cast<std::uint32_t>(run.count),
                                          run.error_count,
                                          final ? static_cast<std::uint32_t>(kFinalResult) : 0u,
                                          run.busy_ns,
                                          run.errors.size()};
                Buffer message(sizeof header + run.errors.size() + run.values.size());
                message.append(&header, sizeof header);
                message.append(run.errors.data(), run.errors.size());
                message.append(run.values.data(), run.values.size());
                messages.push_back(std::move(message));
                next_ += run.count;
                pending_.erase(next);
            }
        }
        for (Buffer& message : messages) (*forward_)(std::move(message));
    }

    const std::uint64_t task_id_;
    const std::uint64_t items_;
    const std::string where_;  // the group's rank and host
    std::shared_ptr<const ResultForwarder> forward_;
    std::mutex mutex_;
    std::uint64_t next_ = 0;                // the first item not forwarded yet
    std::map<std::uint64_t, Run> pending_;  // finished runs waiting for the ones before them, by first item
};

/// A group's pool and what it does with the tasks it receives. `Resolve` turns a TaskHeader's entry (and a callable
/// that is a function pointer) from the sender's names into this process's addresses.
class RankServer {
public:
    using Resolve = std::function<void(std::byte* task)>;  // rewrites entry and callable in place; throws if unknown

    RankServer(const PoolOptions& options, std::string where, ResultForwarder forward, Resolve resolve)
        : where_(std::move(where)), forward_(std::make_shared<const ResultForwarder>(std::move(forward))),
          resolve_(std::move(resolve)), pool_(options) {}
    RankServer(const RankServer&) = delete;
    RankServer& operator=(const RankServer&) = delete;

    /// Workers of this group.
    [[nodiscard]] std::size_t size() const { return pool_.size(); }
    [[nodiscard]] std::vector<pid_t> worker_pids() const { return pool_.worker_pids(); }
    [[nodiscard]] const std::string& where() const noexcept { return where_; }

    /// Runs the task message `task` (a whole one, with its item index) on this group's workers; its results go to
    /// `forward` as they finish. A task this process cannot run (a function it has not loaded) fails whole.
    void run(Buffer task) {
        TaskHeader header{};
        if (task.size() < sizeof header) return;  // (a protocol error: nothing to answer)
        std::memcpy(&header, task.data(), sizeof header);
        const std::uint64_t items = header.item_count;
        try {
            resolve_(task.data());
            std::memcpy(&header, task.data(), sizeof header);
            submit(header, std::move(task));
        } catch (...) {
            // The item stream cannot be read: every item fails with what went wrong, as a worker would answer.
            ReceivedTaskJob failed(nullptr, Buffer(), header.task_id, items, where_, forward_);
            if (items != 0) failed.fail(0, items, std::current_exception());
        }
    }

    /// Stops the workers now (what they run is lost: the sender has stopped waiting for it).
    void terminate() { pool_.terminate(); }

private:
    void submit(const TaskHeader& header, Buffer task) {
        if ((header.flags & kItemIndex) == 0)
            throw SerializationError("procpool: a task for a group without its index");
        const std::size_t index_at = sizeof(TaskHeader) + align8(header.callable_size);
        ItemIndexHeader index{};
        if (task.size() < index_at + sizeof index) throw SerializationError("procpool: truncated task");
        std::memcpy(&index, task.data() + index_at, sizeof index);
        const std::uint64_t count = header.item_count;
        auto block = std::make_shared<ItemBlock>();
        block->count = count;
        std::size_t items_at = index_at + sizeof index;
        if (index.stride != 0) {
            block->stride = index.stride;
            block->base = items_at;
            if (task.size() < items_at + count * index.stride) throw SerializationError("procpool: truncated task");
        } else {
            items_at += (count + 1) * sizeof(std::uint64_t);
            if (task.size() < items_at) throw SerializationError("procpool: truncated task");
            block->offsets.resize(count + 1);
            std::memcpy(block->offsets.data(), task.data() + index_at + sizeof index,
                        (count + 1) * sizeof(std::uint64_t));
            for (std::uint64_t& offset : block->offsets) offset += items_at;
            if (block->offsets.back() > task.size()) throw SerializationError("procpool: truncated task");
            if (count == 1) {  // one item: ItemBlock keeps no offsets then
                block->offsets.clear();
                block->base = items_at;
            }
        }
        Buffer callable(header.callable_size);
        callable.append(task.data() + sizeof(TaskHeader), header.callable_size);
        auto job = std::make_shared<ReceivedTaskJob>(reinterpret_cast<TaskEntry>(header.entry), std::move(callable),
                                                     header.task_id, count, where_, forward_);
        block->bytes = std::move(task);
        if (count == 0) return;  // (the sender never sends an empty task)
        PoolAccess::core(pool_).scheduler.submit(job, Segment{std::move(block), 0, count, 0});
    }

    std::string where_;
    std::shared_ptr<const ResultForwarder> forward_;
    Resolve resolve_;
    Pool pool_;
};

}  // namespace procpool::detail
