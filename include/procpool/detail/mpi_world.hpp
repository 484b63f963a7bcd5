// procpool internals: what every MPI rank shares: the job's shape (MpiWorld, set up by procpool::mpi::Session), the
// message tags, and how code is named across ranks.
//
// Functions cannot travel as addresses between processes that did not fork from one another: a task's entry is named
// by (the loaded object it is in, its offset from that object's load address), the same on every rank of the same
// program whatever ASLR did (mpi_entry_id / mpi_entry_from_id). Nothing to register.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <dlfcn.h>
#include <link.h>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <unordered_map>
#include <vector>

#include "procpool/detail/task.hpp"
#include "procpool/errors.hpp"

namespace procpool::detail {

enum MpiTag : int {
    kMpiTask = 101,        // rank 0 -> a rank: a task message
    kMpiExit = 102,        // rank 0 -> a rank: stop (overtakes queued tasks)
    kMpiResult = 201,      // a rank -> rank 0: a result message
    kMpiInitFailed = 202,  // a rank -> rank 0: its initializer threw (one worker per rank)
    kMpiBye = 203,         // a rank -> rank 0: stopped, sends nothing more
    kMpiWorkerPids = 204,  // a rank -> rank 0: the pids of its pool's workers (a fork pool per rank), when they change
};

/// How the ranks of a job work (procpool::mpi::Layout).
enum class MpiLayout {
    fork_pool_per_rank,   // every rank, rank 0 included, runs a fork pool: its workers run the tasks it receives
    one_worker_per_rank,  // ranks 1..N-1 each run tasks themselves, one at a time; rank 0 only dispatches
};

/// The MPI side of the program, set up by procpool::mpi::Session: the communicator, the layout, and (on rank 0) what
/// each rank reported when the session started and which ranks were told to stop.
struct MpiWorld {
    MPI_Comm comm = MPI_COMM_WORLD;
    int rank = 0;
    int size = 0;
    MpiLayout layout = MpiLayout::fork_pool_per_rank;
    // Rank 0: per rank (index = rank), gathered when the session started.
    std::vector<pid_t> rank_pids;
    std::vector<std::size_t> rank_workers;  // workers of each rank's fork pool (1 with one worker per rank; rank 0: 0)
    std::vector<std::string> rank_hosts;    // MPI_Get_processor_name
    std::mutex mutex;                       // every MPI call on rank 0 (MPI_THREAD_SERIALIZED)
    std::vector<bool> exit_sent;            // per rank (rank 0's own pool included)
    bool finished = false;                  // every other rank said goodbye

    static MpiWorld& instance() {
        static MpiWorld* world = new MpiWorld();
        return *world;
    }
    [[nodiscard]] bool ready() const noexcept { return size != 0; }
    /// "rank 3 on node07": how a crash or timeout names where its worker ran.
    [[nodiscard]] std::string where(int of_rank) const {
        const auto r = static_cast<std::size_t>(of_rank);
        return "rank " + std::to_string(of_rank) + (r < rank_hosts.size() ? " on " + rank_hosts[r] : std::string());
    }

    /// Tells `to_rank` (not 0) to stop once the task it runs is done. Call with `mutex` held.
    void send_exit_locked(int to_rank) {
        const auto r = static_cast<std::size_t>(to_rank);
        if (exit_sent[r]) return;
        exit_sent[r] = true;
        MPI_Send(nullptr, 0, MPI_BYTE, to_rank, kMpiExit, comm);
    }
    /// Stops every other rank and receives (and drops) what they still send, up to their goodbyes, so that no rank
    /// is left in a send when MPI_Finalize runs.
    void finish() {
        std::lock_guard lock(mutex);
        if (finished || size < 2) return;
        for (int r = 1; r < size; ++r) send_exit_locked(r);
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

/// Turns the names a task message carries (its entry, and a function-pointer callable) into this process's addresses,
/// in place. Throws SerializationError for code this process has not loaded.
inline void resolve_task_names(std::byte* task) {
    TaskHeader header{};
    std::memcpy(&header, task, sizeof header);
    header.entry = reinterpret_cast<std::uint64_t>(mpi_entry_from_id(header.entry));
    std::memcpy(task, &header, sizeof header);
    translate_code_pointer_callable(task, false);
}

}  // namespace procpool::detail
