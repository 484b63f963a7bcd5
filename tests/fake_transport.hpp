// An in-process fake of a transport (detail/transport.hpp) with the capabilities the scheduler's decisions depend on:
// revocable queues and replaceable workers. Its "workers" do nothing on their own: the test runs, starts or kills
// them one step at a time (run_next, start_next, kill), so dispatch, rebalancing, budgets and crash attribution can
// be checked deterministically, without processes, rings or timing. The tasks it runs are real: the test thread runs
// each task's entry through detail::TaskRunner, as a worker would, and its results go back as result messages.
#pragma once

#include <procpool/procpool.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

namespace test_support {

class FakeTransport {
public:
    struct Config {
        std::size_t workers = 2;
    };
    static Config make_config(const procpool::PoolOptions& options) { return Config{options.processes.value_or(2)}; }

    explicit FakeTransport(Config config)
        : slots_(config.workers), status_(std::make_unique<procpool::detail::WorkerStatus[]>(config.workers)) {
        for (std::size_t i = 0; i < slots_.size(); ++i) {
            slots_[i].pid = next_pid_++;
            pids_.push_back(slots_[i].pid);
        }
    }

    // ---- Transport ----
    [[nodiscard]] std::size_t size() const noexcept { return slots_.size(); }
    [[nodiscard]] const std::vector<pid_t>& initial_pids() const noexcept { return pids_; }
    [[nodiscard]] std::uint64_t max_fragment() const noexcept { return std::uint64_t{1} << 16; }
    static std::uint64_t entry_id(procpool::detail::TaskEntry entry) noexcept {
        return reinterpret_cast<std::uint64_t>(entry);
    }

    bool write(std::size_t slot, std::uint16_t kind, std::span<const procpool::detail::Piece> pieces, std::size_t total,
               std::size_t& written, std::uint64_t* first_position = nullptr) {
        std::lock_guard lock(mutex_);
        Message message;
        message.kind = kind;
        message.bytes.resize((total + 7) / 8);  // 8-byte aligned, for the claim word
        auto* at = reinterpret_cast<std::byte*>(message.bytes.data());
        for (const procpool::detail::Piece& piece : pieces) {
            if (piece.size != 0) std::memcpy(at, piece.data, piece.size);
            at += piece.size;
        }
        message.size = total;
        Slot& s = slots_[slot];
        message.position = s.tail++;
        if (first_position != nullptr) *first_position = message.position;
        if (kind == procpool::detail::kTaskMessage) {
            procpool::detail::TaskHeader header{};
            std::memcpy(&header, message.bytes.data(), sizeof header);
            writes_.push_back(Write{slot, header.task_id, header.item_count});
        } else {
            ++exit_messages_;
        }
        s.queue.push_back(std::move(message));
        written = total;
        return true;
    }

    template <class Handler>
    bool drain(std::size_t slot, Handler&& handler) {
        bool any = false;
        for (;;) {
            std::vector<std::byte> message;
            {
                std::lock_guard lock(mutex_);
                if (results_held_ || slots_[slot].results.empty()) return any;
                message = std::move(slots_[slot].results.front());
                slots_[slot].results.pop_front();
            }
            any = true;
            handler(procpool::detail::kResultMessage, std::span<const std::byte>(message));
        }
    }

    [[nodiscard]] bool pending() {
        std::lock_guard lock(mutex_);
        return pending_locked();
    }
    template <class Ready>
    void wait(procpool::detail::Deadline deadline, std::chrono::nanoseconds, Ready&& ready) {
        // Waits in 1 ms steps without the lock held while ready() runs (it calls pending()).
        while (!ready()) {
            auto step = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
            if (deadline && *deadline < step) step = *deadline;
            {
                std::unique_lock lock(mutex_);
                changed_.wait_until(lock, step);
            }
            if (deadline && std::chrono::steady_clock::now() >= *deadline) return;
        }
    }
    void wake() { changed_.notify_all(); }
    void shutdown() {
        std::lock_guard lock(mutex_);
        gone_ = true;
    }
    void terminate() {
        std::lock_guard lock(mutex_);
        gone_ = true;
    }
    [[nodiscard]] bool workers_gone() {
        std::lock_guard lock(mutex_);
        return gone_;
    }
    void wait_workers_gone() {}

    // ---- RevocableQueue ----
    bool revoke(std::size_t slot, std::uint64_t position) {
        std::lock_guard lock(mutex_);
        Message* message = find_locked(slot, position);
        if (message == nullptr) return false;
        std::uint32_t expected = procpool::detail::kUnclaimed;
        if (!claim_word(*message).compare_exchange_strong(expected, procpool::detail::kRevoked)) return false;
        ++revocations_;
        return true;
    }

    // ---- ReplaceableWorkers ----
    void signal(std::size_t slot, int signal) {
        std::lock_guard lock(mutex_);
        signals_.push_back({slot, signal});
        // A fake worker dies of every signal it is sent, at once.
        die_locked(slot, signal, 0);
    }
    void respawn(std::size_t slot) {
        std::lock_guard lock(mutex_);
        Slot& s = slots_[slot];
        s.queue.clear();
        s.results.clear();
        s.head = s.tail;
        s.pid = next_pid_++;
        s.alive = true;
        procpool::detail::WorkerStatus& st = status_[slot];
        st.task.store(0);
        st.item.store(0);
        st.item_start_ns.store(0);
        st.initialized.store(1);
        post_locked(procpool::detail::WorkerEvent{procpool::detail::kWorkerSpawned, static_cast<std::uint32_t>(slot),
                                                  s.pid, 0, 0, 0});
    }
    [[nodiscard]] const procpool::detail::WorkerStatus& status(std::size_t slot) const noexcept {
        return status_[slot];
    }
    bool claimed(std::size_t slot, std::uint64_t position) {
        std::lock_guard lock(mutex_);
        Message* message = find_locked(slot, position);
        return message != nullptr && claim_word(*message).load() == procpool::detail::kTaken;
    }
    [[nodiscard]] std::uint64_t task_ring_head(std::size_t slot) const {
        std::lock_guard lock(mutex_);
        return slots_[slot].head;
    }
    [[nodiscard]] bool reports_pending() const {
        std::lock_guard lock(mutex_);
        return !reports_.empty();
    }
    std::optional<procpool::detail::WorkerEvent> poll_report() {
        std::lock_guard lock(mutex_);
        if (reports_.empty()) return std::nullopt;
        procpool::detail::WorkerEvent report = reports_.front();
        reports_.pop_front();
        return report;
    }
    std::vector<procpool::detail::WorkerEvent> take_early_exits() { return {}; }

    // ---- the test's controls ----
    enum class Step { nothing, ran, skipped_revoked, exited };

    /// Result messages the worker in `slot` sent that the poller has not read.
    [[nodiscard]] std::size_t results_waiting(std::size_t slot) const {
        std::lock_guard lock(mutex_);
        return slots_[slot].results.size();
    }
    /// While held, results the workers send wait in their queues: the poller reads them all in one pass when the
    /// hold ends.
    void hold_results(bool held) {
        std::lock_guard lock(mutex_);
        results_held_ = held;
        changed_.notify_all();
    }

    /// The worker in `slot` takes its next message: runs a task whole (the one start_next() began included) and
    /// sends its results, skips one the parent revoked, or exits on an exit message.
    Step run_next(std::size_t slot) {
        std::unique_lock lock(mutex_);
        Slot& s = slots_[slot];
        if (!s.alive || s.queue.empty()) return Step::nothing;
        Message message = std::move(s.queue.front());
        s.queue.pop_front();
        s.head = message.position + 1;
        if (message.kind == procpool::detail::kExitMessage) {
            die_locked(slot, 0, 0);
            return Step::exited;
        }
        std::uint32_t expected = procpool::detail::kUnclaimed;
        std::atomic<std::uint32_t>& claim = claim_word(message);
        if (!claim.compare_exchange_strong(expected, procpool::detail::kTaken) &&
            expected != procpool::detail::kTaken) {
            return Step::skipped_revoked;
        }
        procpool::detail::TaskHeader header{};
        std::memcpy(&header, message.bytes.data(), sizeof header);
        const pid_t pid = s.pid;
        lock.unlock();  // the task runs user code; results come back through send_result()
        procpool::detail::WorkerStatus& st = status_[slot];
        st.task.store(header.task_id);
        const auto* bytes = reinterpret_cast<const std::byte*>(message.bytes.data());
        const std::span<const std::byte> body(bytes, message.size);
        const std::size_t items_at = sizeof header + procpool::detail::align8(header.callable_size);
        Sink sink(*this, slot);
        procpool::detail::Buffer values;
        procpool::detail::Buffer errors;
        procpool::detail::TaskRunner runner(
            header, body.subspan(sizeof header, header.callable_size), body.subspan(items_at), sink,
            procpool::detail::ProgressWords{&st.item, &st.item_start_ns}, values, errors, std::chrono::hours(1));
        reinterpret_cast<procpool::detail::TaskEntry>(header.entry)(runner);
        st.task.store(0);
        std::lock_guard relock(mutex_);
        runs_.push_back(Run{slot, pid, header.task_id, header.item_count});
        changed_.notify_all();
        return Step::ran;
    }

    /// The worker in `slot` claims its next task message and says it runs item `item` since `start_ns` (now by
    /// default), without finishing it: for a kill() or a timeout to find it there. False if nothing was queued.
    bool start_next(std::size_t slot, std::uint64_t item, std::int64_t start_ns = procpool::detail::monotonic_ns()) {
        std::lock_guard lock(mutex_);
        Slot& s = slots_[slot];
        if (s.queue.empty()) return false;
        Message& message = s.queue.front();
        std::uint32_t expected = procpool::detail::kUnclaimed;
        if (!claim_word(message).compare_exchange_strong(expected, procpool::detail::kTaken)) return false;
        procpool::detail::TaskHeader header{};
        std::memcpy(&header, message.bytes.data(), sizeof header);
        procpool::detail::WorkerStatus& st = status_[slot];
        st.item.store(item);
        st.item_start_ns.store(start_ns);
        st.task.store(header.task_id);
        return true;
    }

    /// The worker in `slot` dies of `signal` (0: it exits with `exit_code`).
    void kill(std::size_t slot, int signal, int exit_code = 0) {
        std::lock_guard lock(mutex_);
        die_locked(slot, signal, exit_code);
    }

    struct Write {
        std::size_t slot;
        std::uint64_t task;
        std::uint32_t items;
    };
    struct Run {
        std::size_t slot;
        pid_t pid;
        std::uint64_t task;
        std::uint32_t items;
    };
    [[nodiscard]] std::vector<Write> writes() const {
        std::lock_guard lock(mutex_);
        return writes_;
    }
    [[nodiscard]] std::vector<Run> runs() const {
        std::lock_guard lock(mutex_);
        return runs_;
    }
    /// Messages waiting in `slot`'s queue (the one start_next() began included).
    [[nodiscard]] std::size_t queued(std::size_t slot) const {
        std::lock_guard lock(mutex_);
        return slots_[slot].queue.size();
    }
    [[nodiscard]] std::size_t revocations() const {
        std::lock_guard lock(mutex_);
        return revocations_;
    }
    [[nodiscard]] std::size_t exit_messages() const {
        std::lock_guard lock(mutex_);
        return exit_messages_;
    }
    [[nodiscard]] std::vector<std::pair<std::size_t, int>> signals() const {
        std::lock_guard lock(mutex_);
        return signals_;
    }
    [[nodiscard]] pid_t pid(std::size_t slot) const {
        std::lock_guard lock(mutex_);
        return slots_[slot].pid;
    }

private:
    struct Message {
        std::uint16_t kind = 0;
        std::vector<std::uint64_t> bytes;  // the message, 8-byte aligned
        std::size_t size = 0;
        std::uint64_t position = 0;  // positions count messages here (a real ring counts bytes)
    };
    struct Slot {
        std::deque<Message> queue;
        std::deque<std::vector<std::byte>> results;
        std::uint64_t head = 0;  // position of the first message not consumed
        std::uint64_t tail = 0;
        pid_t pid = 0;
        bool alive = true;
    };
    class Sink final : public procpool::detail::ResultSink {
    public:
        Sink(FakeTransport& transport, std::size_t slot) : transport_(transport), slot_(slot) {}
        void send_result(std::span<const procpool::detail::Piece> pieces, std::size_t total) override {
            std::vector<std::byte> message(total);
            std::byte* at = message.data();
            for (const procpool::detail::Piece& piece : pieces) {
                if (piece.size != 0) std::memcpy(at, piece.data, piece.size);
                at += piece.size;
            }
            std::lock_guard lock(transport_.mutex_);
            transport_.slots_[slot_].results.push_back(std::move(message));
            transport_.changed_.notify_all();
        }

    private:
        FakeTransport& transport_;
        std::size_t slot_;
    };

    static std::atomic<std::uint32_t>& claim_word(Message& message) {
        return *reinterpret_cast<std::atomic<std::uint32_t>*>(reinterpret_cast<std::byte*>(message.bytes.data()) +
                                                              offsetof(procpool::detail::TaskHeader, claim));
    }
    Message* find_locked(std::size_t slot, std::uint64_t position) {
        for (Message& message : slots_[slot].queue) {
            if (message.position == position) return &message;
        }
        return nullptr;
    }
    [[nodiscard]] bool pending_locked() const {
        if (!reports_.empty()) return true;
        if (results_held_) return false;
        for (const Slot& s : slots_) {
            if (!s.results.empty()) return true;
        }
        return false;
    }
    void post_locked(const procpool::detail::WorkerEvent& report) {
        reports_.push_back(report);
        changed_.notify_all();
    }
    void die_locked(std::size_t slot, int signal, int exit_code) {
        Slot& s = slots_[slot];
        if (!s.alive) return;
        s.alive = false;
        post_locked(procpool::detail::WorkerEvent{procpool::detail::kWorkerExited, static_cast<std::uint32_t>(slot),
                                                  s.pid, signal, exit_code, 0});
    }

    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<Slot> slots_;
    std::unique_ptr<procpool::detail::WorkerStatus[]> status_;
    std::vector<pid_t> pids_;
    pid_t next_pid_ = 1000;
    std::deque<procpool::detail::WorkerEvent> reports_;
    std::vector<Write> writes_;
    std::vector<Run> runs_;
    std::vector<std::pair<std::size_t, int>> signals_;
    std::size_t revocations_ = 0;
    std::size_t exit_messages_ = 0;
    bool gone_ = false;
    bool results_held_ = false;
};

static_assert(procpool::detail::Transport<FakeTransport> && procpool::detail::RevocableQueue<FakeTransport> &&
                  procpool::detail::ReplaceableWorkers<FakeTransport>,
              "the fake has the capabilities the scheduler's decisions depend on");

/// The fake with each slot a group of workers with a pool of its own (WorkerGroups), as an MPI rank running a fork
/// pool is: slot i has group_sizes[i % size] workers. Its tasks are only written, never run (a group splits a task by
/// its item index, which the fake's runner does not read): it shows how deep and where the scheduler queues.
class GroupedFakeTransport : public FakeTransport {
public:
    static constexpr std::size_t kGroupSizes[] = {4, 1};

    using FakeTransport::FakeTransport;

    [[nodiscard]] bool grouped() const noexcept { return true; }
    [[nodiscard]] std::size_t workers_in_slot(std::size_t slot) const noexcept {
        return kGroupSizes[slot % std::size(kGroupSizes)];
    }
    std::vector<pid_t> worker_pids() {
        std::vector<pid_t> pids;
        for (std::size_t slot = 0; slot < size(); ++slot) {
            for (std::size_t i = 0; i < workers_in_slot(slot); ++i) pids.push_back(static_cast<pid_t>(slot * 100 + i));
        }
        return pids;
    }
};

static_assert(procpool::detail::WorkerGroups<GroupedFakeTransport>);

}  // namespace test_support
