// Helpers shared by procpool's tests: process inspection and deadlines.
#pragma once

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <dirent.h>
#include <exception>
#include <fcntl.h>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <sys/mman.h>
#include <sys/types.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <procpool/detail/config.hpp>
#include <procpool/errors.hpp>

namespace test_support {

/// The message of the exception `error` holds: its what(), "(no error)" for none, "(not a std::exception)".
inline std::string message_of(const std::exception_ptr& error) {
    if (!error) return "(no error)";
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        return e.what();
    } catch (...) {
        return "(not a std::exception)";
    }
}

/// True while `pid` exists in any state (a zombie included).
inline bool process_exists(pid_t pid) { return ::kill(pid, 0) == 0 || errno == EPERM; }

/// The contents of a /proc file, or "" if it cannot be read (its process or thread has ended). open/read rather
/// than std::ifstream: a process that ends between the open and the read makes the read fail with ESRCH, which
/// libstdc++'s filebuf turns into an exception.
inline std::string read_proc_file(const std::string& path) {
    std::string text;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return text;
    char buffer[4096];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) text.clear();
        if (n <= 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return text;
}

/// The process state letter from /proc/PID/stat ('Z' for a zombie), or 0 if there is no such process.
inline char process_state(pid_t pid) {
    const std::string text = read_proc_file("/proc/" + std::to_string(pid) + "/stat");
    const auto close = text.rfind(')');
    if (close == std::string::npos || close + 2 >= text.size()) return 0;
    return text[close + 2];
}

/// Children of this process (all threads), from /proc/self/task/*/children.
inline std::vector<pid_t> child_pids() {
    std::vector<pid_t> pids;
    DIR* tasks = ::opendir("/proc/self/task");
    if (tasks == nullptr) return pids;
    while (dirent* entry = ::readdir(tasks)) {
        if (entry->d_name[0] == '.') continue;
        std::istringstream children(read_proc_file(std::string("/proc/self/task/") + entry->d_name + "/children"));
        pid_t pid = 0;
        while (children >> pid) pids.push_back(pid);
    }
    ::closedir(tasks);
    return pids;
}

/// Waits up to `timeout` for `done()`; returns its last value.
template <class Done>
bool eventually(Done&& done, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return true;
}

/// One mapping of this process's address space (a line of /proc/self/maps); all zero and empty if there is none.
struct Mapping {
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;
    std::string permissions;  // "rw-s": readable, writable, shared
    [[nodiscard]] bool exists() const { return end != 0; }
};

/// Reads the range and permissions at the start of a /proc/self/maps or /proc/self/smaps header line.
inline bool parse_mapping_line(const std::string& line, Mapping& mapping) {
    char dash = 0;
    std::istringstream fields(line);
    return fields >> std::hex >> mapping.begin >> dash >> mapping.end >> mapping.permissions && dash == '-';
}

/// The mapping that holds `address`.
inline Mapping mapping_holding(std::uintptr_t address) {
    std::istringstream maps(read_proc_file("/proc/self/maps"));
    for (std::string line; std::getline(maps, line);) {
        Mapping mapping;
        if (parse_mapping_line(line, mapping) && mapping.begin <= address && address < mapping.end) return mapping;
    }
    return {};
}

/// The line of /proc/self/smaps that starts with `field` ("Rss:", "VmFlags:") in the entry of the mapping that
/// holds `address`, or "" if there is none.
inline std::string smaps_line(std::uintptr_t address, const std::string& field) {
    std::istringstream smaps(read_proc_file("/proc/self/smaps"));
    bool inside = false;
    for (std::string line; std::getline(smaps, line);) {
        if (Mapping mapping; parse_mapping_line(line, mapping)) {
            inside = mapping.begin <= address && address < mapping.end;
        } else if (inside && line.rfind(field, 0) == 0) {
            return line;
        }
    }
    return "";
}

/// Bytes of the pages of [data, data + bytes) that are in memory (mincore: mapped into this process, or for
/// shared memory in the page cache, wherever they were touched), or -1 if mincore fails.
inline long long resident_bytes_in(const void* data, std::size_t bytes) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    std::vector<unsigned char> pages((bytes + page - 1) / page);
    if (::mincore(const_cast<void*>(data), bytes, pages.data()) != 0) return -1;
    long long resident = 0;
    for (unsigned char p : pages) resident += (p & 1u) != 0 ? static_cast<long long>(page) : 0;
    return resident;
}

/// Entries of /dev/shm.
inline std::set<std::string> dev_shm_entries() {
    std::set<std::string> names;
    DIR* dir = ::opendir("/dev/shm");
    if (dir == nullptr) return names;
    while (dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] != '.') names.insert(entry->d_name);
    }
    ::closedir(dir);
    return names;
}

/// Whether `allocate_past_limit()` failed as an allocation past PoolOptions::memory_limit fails: with std::bad_alloc,
/// or, under AddressSanitizer, also with WorkerCrashed (ASan's throwing operator new never throws: it reports the
/// failed allocation and ends the worker, whatever allocator_may_return_null says). False when nothing failed;
/// any other exception propagates.
template <class F>
bool fails_past_memory_limit(F&& allocate_past_limit) {
    try {
        allocate_past_limit();
        return false;
    } catch (const std::bad_alloc&) {
        return true;
    } catch (const procpool::WorkerCrashed&) {
#ifdef PROCPOOL_DETAIL_ASAN
        return true;
#else
        throw;
#endif
    }
}

}  // namespace test_support
