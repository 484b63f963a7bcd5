// procpool internals: a group of workers behind one slot of a pool (detail/transport.hpp, WorkerGroups): an MPI rank,
// rank 0's own node included, running a fork pool of its own.
//
// The pool that sent a task sees one worker, the group. The group splits each task it receives among its workers with
// its own scheduler (so a crash, a timeout, max_tasks_per_child, memory_limit, the initializer and retries work as on
// one machine), and sends the results back as the sender expects them: in item order, the last message final. Runs
// of items that finish close together go back as one message (a group's sender may serve thousands of workers: each
// message costs it more than an item does). A worker's crash or timeout comes back as that item's WorkerCrashed or
// TaskTimeout, naming the rank and host; when the group's pool breaks (an initializer failed), broken() says why.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/jobs.hpp"
#include "procpool/detail/platform.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/errors.hpp"
#include "procpool/pool.hpp"

namespace procpool::detail {

/// Where a group's result messages go (to the rank that sent the tasks). Thread-safe; never blocks for long.
using ResultForwarder = std::function<void(Buffer message)>;

/// One task a group received, run as a job of the group's pool. Its results are forwarded in item order: each run of
/// items that is next in order joins the message being gathered, which goes when the task is done or once its first
/// run has waited `coalescing` (also when nothing else finishes: flush_due()).
class ReceivedTaskJob final : public JobBase {
public:
    ReceivedTaskJob(TaskEntry task_entry, Buffer callable, std::uint64_t task_id, std::uint64_t items,
                    std::string where, std::shared_ptr<const ResultForwarder> forward,
                    std::chrono::nanoseconds coalescing = {})
        : JobBase(task_entry, std::move(callable), 0, false), task_id_(task_id), items_(items),
          where_(std::move(where)), forward_(std::move(forward)), coalescing_ns_(coalescing.count()) {}

    void deliver(std::uint64_t first, std::uint64_t count, std::span<ItemError> errors, InputArchive& values,
                 std::uint64_t busy_ns) override {
        Run run;
        run.count = count;
        run.busy_ns = busy_ns;
        OutputArchive ar(run.errors);
        for (ItemError& error : errors) encode_item_error(ar, run, error.index, error.error);
        const std::size_t left = values.remaining();
        run.values.append(values.take(left), left);
        finished(first, std::move(run));
    }

    void fail(std::uint64_t first, std::uint64_t count, const std::exception_ptr& error) override {
        Run run;
        run.count = count;
        OutputArchive ar(run.errors);
        for (std::uint64_t i = 0; i < count; ++i) encode_item_error(ar, run, first + i, error);
        finished(first, std::move(run));
    }

    [[nodiscard]] bool cancelled() const noexcept override { return false; }

    /// Forwards the results gathered so far if they have waited `coalescing`. Returns true once every result of the
    /// task was forwarded. Thread-safe.
    bool flush_due(std::int64_t now_ns) {
        std::lock_guard lock(mutex_);
        if (gathered_.count != 0 && now_ns - gathered_since_ns_ >= coalescing_ns_) forward_gathered_locked();
        return sent_ == items_;
    }

private:
    /// The results of a run of items, encoded as a result message's parts (each error record starts with its item's
    /// index in the task, as a worker's do).
    struct Run {
        std::uint64_t count = 0;
        std::uint32_t error_count = 0;
        std::uint64_t busy_ns = 0;
        Buffer errors;
        Buffer values;
    };

    /// Encodes `error` for the item `index`; a crash or timeout of this group's worker names the group.
    void encode_item_error(OutputArchive& ar, Run& run, std::uint64_t index, const std::exception_ptr& error) const {
        ++run.error_count;
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

    /// Records a finished run, gathers every run that is next in item order, and forwards what was gathered when
    /// the task is done or it is due.
    void finished(std::uint64_t first, Run finished_run) {
        std::lock_guard lock(mutex_);
        pending_.emplace(first, std::move(finished_run));
        for (auto next = pending_.find(next_); next != pending_.end(); next = pending_.find(next_)) {
            gather_locked(next->second);
            next_ += next->second.count;
            pending_.erase(next);
        }
        if (gathered_.count == 0) return;
        if (next_ == items_ || coalescing_ns_ == 0 || monotonic_ns() - gathered_since_ns_ >= coalescing_ns_) {
            forward_gathered_locked();
        }
    }

    void gather_locked(Run& run) {
        Run& into = gathered_;
        if (into.count == 0 && coalescing_ns_ != 0) gathered_since_ns_ = monotonic_ns();
        into.error_count += run.error_count;
        into.errors.append(run.errors.data(), run.errors.size());
        into.values.append(run.values.data(), run.values.size());
        into.count += run.count;
        into.busy_ns += run.busy_ns;
    }

    /// Sends the gathered results as one message. Under the lock, so that messages leave in item order.
    void forward_gathered_locked() {
        Run& run = gathered_;
        const bool final = sent_ + run.count == items_;
        const ResultHeader header{task_id_,
                                  static_cast<std::uint32_t>(sent_),
                                  static_cast<std::uint32_t>(run.count),
                                  run.error_count,
                                  final ? static_cast<std::uint32_t>(kFinalResult) : 0u,
                                  run.busy_ns,
                                  run.errors.size()};
        Buffer message(sizeof header + run.errors.size() + run.values.size());
        message.append(&header, sizeof header);
        message.append(run.errors.data(), run.errors.size());
        message.append(run.values.data(), run.values.size());
        sent_ += run.count;
        run.count = 0;
        run.busy_ns = 0;
        run.error_count = 0;
        run.errors.clear();
        run.values.clear();
        (*forward_)(std::move(message));
    }

    const std::uint64_t task_id_;
    const std::uint64_t items_;
    const std::string where_;  // the group's rank and host
    std::shared_ptr<const ResultForwarder> forward_;
    const std::int64_t coalescing_ns_;
    std::mutex mutex_;
    std::uint64_t next_ = 0;                // the first item not gathered yet
    std::uint64_t sent_ = 0;                // the first item not forwarded yet
    std::int64_t gathered_since_ns_ = 0;    // when the first of the gathered runs was gathered
    Run gathered_;                          // items sent_ .. next_, finished and not forwarded yet
    std::map<std::uint64_t, Run> pending_;  // finished runs waiting for the ones before them, by first item
};

/// A group's pool and what it does with the tasks it receives. `Resolve` turns a TaskHeader's entry (and a callable
/// that is a function pointer) from the sender's names into this process's addresses. run() and flush_due() are
/// called by one thread (the one that receives the tasks); the results are forwarded from the pool's threads.
class RankServer {
public:
    using Resolve = std::function<void(std::byte* task)>;  // rewrites entry and callable in place; throws if unknown

    /// Results that finish within `coalescing` of the last message of their task go back with the next one (zero:
    /// every run of items as it finishes). Forks the pool's workers (throws as Pool's constructor does).
    RankServer(const PoolOptions& options, std::string where, ResultForwarder forward, Resolve resolve,
               std::chrono::nanoseconds coalescing = {})
        : where_(std::move(where)), forward_(std::make_shared<const ResultForwarder>(std::move(forward))),
          resolve_(std::move(resolve)), coalescing_(coalescing), pool_(options) {
        // The oldest task first: it finishes sooner, and fewer tasks gather results at once.
        PoolAccess::core(pool_).scheduler.set_jobs_take_turns(false);
    }
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

    /// Forwards the results held back for coalescing that are due; forgets the tasks that are done, keeping how
    /// long their items took (a later task of the same function starts with that estimate, not with probes).
    /// Cheap when nothing is held back.
    void flush_due() {
        if (running_.empty()) return;
        const std::int64_t now = monotonic_ns();
        if (now < next_flush_ns_) return;  // (a few looks per coalescing period are enough)
        next_flush_ns_ = now + coalescing_.count() / 4;
        std::erase_if(running_, [&](const std::shared_ptr<ReceivedTaskJob>& job) {
            if (!job->flush_due(now)) return false;
            const double item_ns = job->item_ns.load(std::memory_order_relaxed);
            if (item_ns > 0) item_ns_[job->entry()] = item_ns;
            return true;
        });
    }

    /// Why this group's pool cannot go on (an initializer failed, its fork server died) once it broke; else null.
    /// Never blocks.
    [[nodiscard]] std::exception_ptr broken() const noexcept {
        return PoolAccess::core(pool_).scheduler.broken_error();
    }

    /// broken()'s error encoded as an initializer-failure message for the sender (which breaks its pool too).
    [[nodiscard]] Buffer broken_message() const {
        Buffer message;
        OutputArchive ar(message);
        try {
            std::rethrow_exception(broken());
        } catch (...) {
            encode_current_exception(ar);
        }
        return message;
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
        if (count == 0) return;  // (the sender never sends an empty task)
        Buffer callable(header.callable_size);
        callable.append(task.data() + sizeof(TaskHeader), header.callable_size);
        const auto entry = reinterpret_cast<TaskEntry>(header.entry);
        auto job = std::make_shared<ReceivedTaskJob>(entry, std::move(callable), header.task_id, count, where_,
                                                     forward_, coalescing_);
        if (const auto known = item_ns_.find(entry); known != item_ns_.end()) {
            job->item_ns.store(known->second, std::memory_order_relaxed);
        }
        block->bytes = std::move(task);
        PoolAccess::core(pool_).scheduler.submit(job, Segment{std::move(block), 0, count, 0});
        running_.push_back(std::move(job));
    }

    std::string where_;
    std::shared_ptr<const ResultForwarder> forward_;
    Resolve resolve_;
    std::chrono::nanoseconds coalescing_;
    std::vector<std::shared_ptr<ReceivedTaskJob>> running_;  // tasks received, until all their results went
    std::unordered_map<TaskEntry, double> item_ns_;          // the last time per item seen for each function
    std::int64_t next_flush_ns_ = 0;                         // flush_due() looks at the tasks from then on
    Pool pool_;
};

}  // namespace procpool::detail
