// procpool internals: the MPI transport. Rank 0 runs the pool's scheduler; ranks 1..N-1 are its workers.
//
// The wire format is the fork transport's (TaskHeader/ResultHeader messages), one MPI message each, the message
// kind in the tag. Sends are MPI_Isend from buffers the transport keeps until they complete, so the scheduler
// never blocks on a busy rank. Every MPI call goes through one mutex (MPI_THREAD_SERIALIZED): the service thread,
// a thread waiting for a result and submitting threads all use MPI.
//
// Functions cannot travel as addresses between processes that did not fork from one another: a task's entry is
// named by (the loaded object it is in, its offset from that object's load address), the same on every rank of
// the same program whatever ASLR did (entry_id / entry_from_id). Nothing to register.
//
// What MPI cannot do, this transport does not offer: queued tasks cannot be taken back from a rank, and a rank
// cannot be signalled or replaced. With Open MPI's default error handling a rank that dies ends the whole job:
// mpirun reports which rank died and of what, and kills the others.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <dlfcn.h>
#include <functional>
#include <link.h>
#include <list>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/events.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/detail/ring.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/detail/transport.hpp"
#include "procpool/detail/worker_setup.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

enum MpiTag : int { kMpiTask = 101, kMpiExit = 102, kMpiResult = 201, kMpiInitFailed = 202, kMpiBye = 203 };

/// The MPI side of the program, set up by procpool::mpi::Session: the communicator, every rank's pid (gathered
/// when the session starts), and which worker ranks were told to stop. Rank 0 only, but for `comm`.
struct MpiWorld {
    MPI_Comm comm = MPI_COMM_WORLD;
    int rank = 0;
    int size = 0;
    std::vector<pid_t> worker_pids;
    std::mutex mutex;             // every MPI call on rank 0 (MPI_THREAD_SERIALIZED)
    std::vector<bool> exit_sent;  // per worker rank
    bool finished = false;        // every worker rank said goodbye

    static MpiWorld& instance() {
        static MpiWorld* world = new MpiWorld();
        return *world;
    }
    [[nodiscard]] bool ready() const noexcept { return size != 0; }

    /// Tells worker rank `slot + 1` to stop once the task it runs is done. Call with `mutex` held.
    void send_exit_locked(std::size_t slot) {
        if (exit_sent[slot]) return;
        exit_sent[slot] = true;
        MPI_Send(nullptr, 0, MPI_BYTE, static_cast<int>(slot + 1), kMpiExit, comm);
    }
    /// Stops every worker rank and receives (and drops) what they still send, up to their goodbyes, so that no
    /// rank is left in a send when MPI_Finalize runs.
    void finish() {
        std::lock_guard lock(mutex);
        if (finished || size < 2) return;
        for (std::size_t slot = 0; slot < exit_sent.size(); ++slot) send_exit_locked(slot);
        int goodbyes = 0;
        std::vector<std::byte> sink;
        while (goodbyes < size - 1) {
            MPI_Status status;
            MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm, &status);
            int count = 0;
            MPI_Get_count(&status, MPI_BYTE, &count);
            sink.resize(static_cast<std::size_t>(count));
            MPI_Recv(sink.data(), count, MPI_BYTE, status.MPI_SOURCE, status.MPI_TAG, comm, MPI_STATUS_IGNORE);
            if (status.MPI_TAG == kMpiBye) ++goodbyes;
        }
        finished = true;
    }
};

// ---- naming code across ranks -------------------------------------------------------------------------------------
struct LoadedObject {
    std::uint64_t tag;    // 16-bit hash of the object's file name (0 for the program itself)
    std::uintptr_t base;  // its load address (dl_iterate_phdr's dlpi_addr)
};

inline std::uint64_t object_tag(const char* path) {
    if (path == nullptr || *path == '\0') return 0;  // the main program
    const char* slash = std::strrchr(path, '/');
    const std::string_view name(slash != nullptr ? slash + 1 : path);
    std::uint64_t h = 1469598103934665603ULL;  // FNV-1a
    for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
    return 1 + h % 0xfffe;  // 1..0xffff: never 0
}

/// The loaded object that contains `address`.
inline std::optional<LoadedObject> object_containing(std::uintptr_t address) {
    struct Search {
        std::uintptr_t address;
        std::optional<LoadedObject> found;
    } search{address, std::nullopt};
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) {
            auto* s = static_cast<Search*>(data);
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const ElfW(Phdr)& ph = info->dlpi_phdr[i];
                if (ph.p_type != PT_LOAD) continue;
                const std::uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
                if (s->address >= begin && s->address < begin + ph.p_memsz) {
                    s->found = LoadedObject{object_tag(info->dlpi_name), info->dlpi_addr};
                    return 1;
                }
            }
            return 0;
        },
        &search);
    return search.found;
}

/// The load address of the object whose tag is `tag`.
inline std::optional<std::uintptr_t> object_base(std::uint64_t tag) {
    struct Search {
        std::uint64_t tag;
        std::optional<std::uintptr_t> base;
    } search{tag, std::nullopt};
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) {
            auto* s = static_cast<Search*>(data);
            if (object_tag(info->dlpi_name) != s->tag) return 0;
            s->base = info->dlpi_addr;
            return 1;
        },
        &search);
    return search.base;
}

/// A stable name for the code at `address` (a task entry, a function pointer): the same number on every rank of
/// the same program, whatever ASLR did.
inline std::uint64_t mpi_code_id(std::uintptr_t address) {
    static std::mutex mutex;
    static std::unordered_map<std::uintptr_t, std::uint64_t> cache;
    std::lock_guard lock(mutex);
    if (const auto it = cache.find(address); it != cache.end()) return it->second;
    const std::optional<LoadedObject> object = object_containing(address);
    if (!object) throw std::logic_error("procpool: code outside every loaded object");
    const std::uint64_t offset = address - object->base;
    if (offset >= (std::uint64_t{1} << 48)) throw std::logic_error("procpool: code too far into its object");
    const std::uint64_t id = (object->tag << 48) | offset;
    cache.emplace(address, id);
    return id;
}

/// The address in this process of the code named `id`.
inline std::uintptr_t mpi_code_address(std::uint64_t id) {
    static std::mutex mutex;
    static std::unordered_map<std::uint64_t, std::uintptr_t> cache;
    std::lock_guard lock(mutex);
    if (const auto it = cache.find(id); it != cache.end()) return it->second;
    const std::optional<std::uintptr_t> base = object_base(id >> 48);
    if (!base) throw SerializationError("procpool: a task names code this rank has not loaded (different binaries?)");
    const std::uintptr_t address = *base + (id & ((std::uint64_t{1} << 48) - 1));
    cache.emplace(id, address);
    return address;
}

inline std::uint64_t mpi_entry_id(TaskEntry entry) { return mpi_code_id(reinterpret_cast<std::uintptr_t>(entry)); }
inline TaskEntry mpi_entry_from_id(std::uint64_t id) { return reinterpret_cast<TaskEntry>(mpi_code_address(id)); }

/// Renames a function-pointer callable in a task message, in place: to its code id (`to_id`) or back.
inline void translate_code_pointer_callable(std::byte* task, bool to_id) {
    TaskHeader header;
    std::memcpy(&header, task, sizeof header);
    if ((header.flags & kCodePointerCallable) == 0 || header.callable_size != sizeof(std::uint64_t)) return;
    std::uint64_t word = 0;
    std::memcpy(&word, task + sizeof header, sizeof word);
    word = to_id ? mpi_code_id(word) : mpi_code_address(word);
    std::memcpy(task + sizeof header, &word, sizeof word);
}

// ---- the transport (rank 0) ---------------------------------------------------------------------------------------
/// MPI ranks as workers. Of detail/transport.hpp's capabilities it has none: a rank's queued tasks cannot be taken
/// back, a rank cannot be signalled or replaced, ranks share no memory, and whole messages are sent at once.
class MpiTransport {
public:
    struct Config {
        MPI_Comm comm = MPI_COMM_WORLD;
        std::size_t workers = 0;
        std::uint64_t max_message = std::uint64_t{64} << 20;
    };

    /// The configuration for a pool over every other rank of MPI_COMM_WORLD. Throws std::invalid_argument for
    /// options MPI cannot honour, and when there is no other rank.
    static Config make_config(const PoolOptions& options) {
        const MpiWorld& world = MpiWorld::instance();
        if (!world.ready()) {
            throw std::logic_error("procpool: make the MPI pool through procpool::mpi::Session (it starts MPI)");
        }
        const int size = world.size;
        if (size < 2) {
            throw std::invalid_argument(
                "procpool: the MPI pool needs at least 2 ranks: rank 0 runs the program, the "
                "others run tasks (mpirun -n 3 ...)");
        }
        if (options.processes && *options.processes != static_cast<std::size_t>(size - 1)) {
            throw std::invalid_argument("procpool: the MPI pool has one worker per rank other than 0 (" +
                                        std::to_string(size - 1) + "); set `processes` to that or leave it empty");
        }
        if (options.task_timeout || options.max_tasks_per_child) {
            throw std::invalid_argument(
                "procpool: task_timeout and max_tasks_per_child need workers the pool can "
                "stop and replace, which MPI ranks are not");
        }
        Config config;
        config.comm = world.comm;
        config.workers = static_cast<std::size_t>(size - 1);
        return config;
    }

    explicit MpiTransport(Config config)
        : config_(config), world_(MpiWorld::instance()), mutex_(world_.mutex), received_(config.workers) {
        std::lock_guard lock(mutex_);
        if (world_.finished || std::count(world_.exit_sent.begin(), world_.exit_sent.end(), true) != 0) {
            throw PoolStateError("procpool: the MPI worker ranks were already stopped (one pool per session)");
        }
    }
    MpiTransport(const MpiTransport&) = delete;
    MpiTransport& operator=(const MpiTransport&) = delete;
    ~MpiTransport() {
        std::lock_guard lock(mutex_);
        for (Send& send : sends_) MPI_Wait(&send.request, MPI_STATUS_IGNORE);
    }

    [[nodiscard]] std::size_t size() const noexcept { return config_.workers; }
    [[nodiscard]] std::uint64_t max_fragment() const noexcept { return config_.max_message; }
    [[nodiscard]] static std::uint64_t entry_id(TaskEntry entry) { return mpi_entry_id(entry); }
    [[nodiscard]] const std::vector<pid_t>& initial_pids() const noexcept { return world_.worker_pids; }

    /// Sends a whole message to worker `slot` (rank slot + 1); never blocks, always complete.
    bool write(std::size_t slot, std::uint16_t kind, std::span<const Piece> pieces, std::size_t total,
               std::size_t& written, std::uint64_t* = nullptr) {
        if (total > static_cast<std::size_t>(INT32_MAX))
            throw SerializationError("procpool: an MPI message over 2 GiB");
        written = total;
        std::lock_guard lock(mutex_);
        if (kind == kExitMessage) {
            world_.send_exit_locked(slot);
            return true;
        }
        Buffer buffer(total);
        for (const Piece& piece : pieces) buffer.append(piece.data, piece.size);
        translate_code_pointer_callable(buffer.data(), true);  // a function pointer means nothing on another rank
        sends_.push_back(Send{std::move(buffer), MPI_REQUEST_NULL});
        Send& send = sends_.back();
        MPI_Isend(send.buffer.data(), static_cast<int>(total), MPI_BYTE, static_cast<int>(slot + 1), kMpiTask,
                  config_.comm, &send.request);
        reap_sends_locked();
        return true;
    }

    /// Hands every complete message from worker `slot` to `handler(kind, bytes)`. Returns true if any.
    template <class Handler>
    bool drain(std::size_t slot, Handler&& handler) {
        receive_all();
        std::deque<Received>& queue = received_[slot];
        bool any = false;
        while (true) {
            Received message;
            {
                std::lock_guard lock(mutex_);
                if (queue.empty()) break;
                message = std::move(queue.front());
                queue.pop_front();
            }
            any = true;
            handler(message.kind, message.bytes.view());
        }
        return any;
    }

    [[nodiscard]] bool pending() {
        receive_all();
        std::lock_guard lock(mutex_);
        for (const auto& queue : received_) {
            if (!queue.empty()) return true;
        }
        return false;
    }
    /// Polls until `ready()` or `deadline`, backing off to 1 ms between looks (MPI has no blocking wait that an
    /// in-process event can interrupt).
    template <class Ready>
    void wait(Deadline deadline, std::chrono::nanoseconds spin, Ready&& ready) {
        const auto start = MonotonicClock::now();
        auto pause = std::chrono::microseconds(5);
        while (!ready()) {
            const auto now = MonotonicClock::now();
            if (deadline && now >= *deadline) return;
            if (now - start >= spin) {
                std::this_thread::sleep_for(pause);
                pause = std::min(pause * 2, std::chrono::microseconds(1000));
            }
        }
    }
    void wake() noexcept {}  // waiters poll
    /// Plays the fork server's part in the life cycle: gone once every worker rank was told to stop.
    [[nodiscard]] bool workers_gone() {
        std::lock_guard lock(mutex_);
        return std::count(world_.exit_sent.begin(), world_.exit_sent.end(), true) ==
               static_cast<std::ptrdiff_t>(world_.exit_sent.size());
    }
    /// Nothing to reap: the worker ranks' goodbyes are collected by the session (MpiWorld::finish) before
    /// MPI_Finalize.
    void wait_workers_gone() noexcept {}
    /// Every worker rank stops serving once the task it runs is done.
    void shutdown() { stop_workers(); }
    /// As shutdown(): an MPI rank cannot be stopped in the middle of a task; its late results are dropped.
    void terminate() { stop_workers(); }

private:
    struct Send {
        Buffer buffer;
        MPI_Request request;
    };
    struct Received {
        std::uint16_t kind = 0;
        Buffer bytes;
    };

    void stop_workers() {
        std::lock_guard lock(mutex_);
        for (std::size_t slot = 0; slot < config_.workers; ++slot) world_.send_exit_locked(slot);
    }

    void reap_sends_locked() {
        while (!sends_.empty()) {
            int done = 0;
            MPI_Test(&sends_.front().request, &done, MPI_STATUS_IGNORE);
            if (done == 0) break;
            sends_.pop_front();
        }
    }

    /// Receives every message that has arrived, into the per-worker queues.
    void receive_all() {
        std::lock_guard lock(mutex_);
        reap_sends_locked();
        for (;;) {
            int arrived = 0;
            MPI_Status status;
            MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, config_.comm, &arrived, &status);
            if (arrived == 0) return;
            if (status.MPI_TAG == kMpiBye) return;  // left for MpiWorld::finish()
            int count = 0;
            MPI_Get_count(&status, MPI_BYTE, &count);
            Received message;
            message.kind = status.MPI_TAG == kMpiInitFailed ? kInitFailedMessage : kResultMessage;
            std::byte* into = message.bytes.extend(static_cast<std::size_t>(count));
            MPI_Recv(into, count, MPI_BYTE, status.MPI_SOURCE, status.MPI_TAG, config_.comm, MPI_STATUS_IGNORE);
            const auto slot = static_cast<std::size_t>(status.MPI_SOURCE - 1);
            if (slot < received_.size()) received_[slot].push_back(std::move(message));
        }
    }

    Config config_;
    MpiWorld& world_;
    std::mutex& mutex_;  // the world's: every MPI call (MPI_THREAD_SERIALIZED)
    std::list<Send> sends_;
    std::vector<std::deque<Received>> received_;
};

static_assert(Transport<MpiTransport> && !StreamingWrites<MpiTransport> && !RevocableQueue<MpiTransport> &&
                  !ReplaceableWorkers<MpiTransport> && !SharedMemoryWorkers<MpiTransport> &&
                  !MutableDoorbell<MpiTransport>,
              "MpiTransport is a Transport without optional capabilities");

// ---- a worker rank --------------------------------------------------------------------------------------------------
/// Serves tasks from rank 0 until it says to stop. Runs `initializer` first; if it throws, rank 0 is told and the
/// pool breaks there. Returns when done.
inline void serve_mpi_worker(MPI_Comm comm, const std::function<void()>& initializer,
                             std::optional<std::size_t> memory_limit) {
    struct Sink final : ResultSink {
        MPI_Comm comm;
        Buffer message;
        void send_result(std::span<const Piece> pieces, std::size_t total) override {
            message.clear();
            message.reserve(total);
            for (const Piece& piece : pieces) message.append(piece.data, piece.size);
            MPI_Send(message.data(), static_cast<int>(message.size()), MPI_BYTE, 0, kMpiResult, comm);
        }
    } sink;
    sink.comm = comm;
    apply_memory_limit(memory_limit);
    Buffer error;
    if (!run_initializer(initializer, error)) {
        MPI_Send(error.data(), static_cast<int>(error.size()), MPI_BYTE, 0, kMpiInitFailed, comm);
    }
    Buffer task;
    Buffer values;
    Buffer errors;
    for (;;) {
        // A stop request overtakes queued tasks (it has its own tag): terminate() does not wait for them.
        int stop = 0;
        MPI_Iprobe(0, kMpiExit, comm, &stop, MPI_STATUS_IGNORE);
        MPI_Status status;
        if (stop != 0) {
            MPI_Recv(nullptr, 0, MPI_BYTE, 0, kMpiExit, comm, MPI_STATUS_IGNORE);
            MPI_Send(nullptr, 0, MPI_BYTE, 0, kMpiBye, comm);
            return;
        }
        MPI_Probe(0, MPI_ANY_TAG, comm, &status);
        if (status.MPI_TAG == kMpiExit) continue;  // handled at the top
        int count = 0;
        MPI_Get_count(&status, MPI_BYTE, &count);
        task.clear();
        std::byte* into = task.extend(static_cast<std::size_t>(count));
        MPI_Recv(into, count, MPI_BYTE, 0, status.MPI_TAG, comm, MPI_STATUS_IGNORE);
        TaskHeader header;
        std::memcpy(&header, task.data(), sizeof header);
        const std::span<const std::byte> body = task.view();
        bool translated = true;
        try {
            translate_code_pointer_callable(task.data(), false);
        } catch (...) {
            translated = false;
        }
        const std::size_t items_at = sizeof(TaskHeader) + align8(header.callable_size);
        TaskRunner runner(header, body.subspan(sizeof(TaskHeader), header.callable_size), body.subspan(items_at), sink,
                          ProgressWords{}, values, errors, std::chrono::microseconds(200));
        TaskEntry entry = nullptr;
        try {
            if (!translated) throw SerializationError("procpool: a task's function is not in this rank's program");
            entry = mpi_entry_from_id(header.entry);
        } catch (...) {
            runner.fail_rest(0);
            runner.finish();
            continue;
        }
        entry(runner);
    }
}

}  // namespace procpool::detail
