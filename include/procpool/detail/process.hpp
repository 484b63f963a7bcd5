// procpool internals: thin, EINTR-safe wrappers over the process system calls procpool uses.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "procpool/detail/config.hpp"

namespace procpool::detail {

/// A file descriptor that refers to a process and polls readable when it ends (Linux >= 5.3).
inline int pidfd_open(pid_t pid) noexcept { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

inline void close_quietly(int& fd) noexcept {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

/// Sends one datagram on a SOCK_SEQPACKET socket; false if the peer is gone. Never raises SIGPIPE.
inline bool send_packet(int fd, const void* data, std::size_t size) noexcept {
    for (;;) {
        const ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
        if (n >= 0) return true;
        if (errno != EINTR) return false;
    }
}

/// Receives one datagram. Returns bytes read, 0 when the peer closed, -1 when none is waiting (non-blocking) or on
/// error.
inline ssize_t receive_packet(int fd, void* data, std::size_t size, bool block) noexcept {
    for (;;) {
        const ssize_t n = ::recv(fd, data, size, block ? 0 : MSG_DONTWAIT);
        if (n >= 0 || errno != EINTR) return n;
    }
}

/// Reaps `pid`. Returns its wait status, or -1 if it is not (or no longer) our child. With `block` false,
/// returns -2 while it still runs.
inline int reap(pid_t pid, bool block) noexcept {
    for (;;) {
        int status = 0;
        const pid_t r = ::waitpid(pid, &status, block ? 0 : WNOHANG);
        if (r == pid) return status;
        if (r == 0) return -2;
        if (errno != EINTR) return -1;
    }
}

/// Sets a signal's disposition to SIG_DFL or SIG_IGN, with sigaction() (which bind_child_functions_early() binds;
/// signal() it cannot call without changing something).
inline void set_signal_disposition(int signal, void (*disposition)(int)) noexcept {
    struct sigaction action {};
    action.sa_handler = disposition;
    ::sigemptyset(&action.sa_mask);
    ::sigaction(signal, &action, nullptr);
}

/// _exit(code), called through the function's GOT entry (bound when a position-independent program is loaded, the
/// default on Debian) rather than through its lazily bound PLT entry: a process that never called _exit() would
/// otherwise pay the dynamic linker's first lookup on its way out (see bind_child_functions_early()); in a non-PIE
/// program the address is the PLT entry's and nothing is gained. Interposers (sanitizers) still see the call.
[[noreturn]] inline void exit_now(int code) noexcept {
    void (*exit_function)(int) = &::_exit;
    asm volatile("" : "+r"(exit_function));  // keeps the compiler from turning it back into a PLT call
    exit_function(code);
    __builtin_unreachable();
}

/// Makes the dynamic linker bind, once in this process, the C library functions that the fork server and a fresh
/// worker call, so that every process forked later inherits them bound. A program linked with lazy binding (the
/// default without -z now) resolves a function at its first call, and in a freshly forked process that lookup
/// touches ~10 pages of symbol tables, each one a page fault: ~12 faults per process, three processes per pool of
/// two, measured as ~3% of starting and stopping such a pool on a 2-vCPU VM. Every call here only asks something.
inline void bind_child_functions_early() noexcept {
    static const bool bound = [] {
        int value = 0;
        (void)::prctl(PR_GET_PDEATHSIG, &value);
        (void)::getppid();
        (void)::poll(nullptr, 0, 0);
        (void)::sched_yield();
        (void)std::chrono::steady_clock::now();
        (void)::waitpid(::getpid(), nullptr, WNOHANG);  // never a child of itself: ECHILD
        (void)::send(-1, nullptr, 0, MSG_NOSIGNAL);     // EBADF
        (void)::recv(-1, nullptr, 0, MSG_DONTWAIT);     // EBADF
        struct sigaction current {};
        (void)::sigaction(SIGINT, nullptr, &current);
        (void)::sigemptyset(&current.sa_mask);
        (void)::sigaddset(&current.sa_mask, SIGTERM);
        (void)::pthread_sigmask(SIG_BLOCK, nullptr, &current.sa_mask);  // only asks
        (void)::syscall(SYS_getpid);
        char bytes[2] = {};
        volatile std::size_t one = 1;  // a size the compiler cannot see, and a result it must keep: calls stay calls
        std::memmove(bytes, bytes + 1, one);
        std::memcpy(bytes + 1, bytes, one);
        asm volatile("" : : "r"(bytes) : "memory");
        return true;
    }();
    (void)bound;
}

/// Reaps the child `pidfd` refers to (pid `pid`), waiting for it to exit; true if it exited with status 0. Through
/// the pidfd, a child that something else reaped already cannot be confused with a new one given the same pid
/// (waitid P_PIDFD, Linux >= 5.4; before that, by pid).
inline bool reap_through_pidfd(int pidfd, pid_t pid) noexcept {
    siginfo_t info{};
    for (;;) {
        if (::waitid(static_cast<idtype_t>(3 /* P_PIDFD */), static_cast<id_t>(pidfd), &info, WEXITED) == 0) {
            return info.si_code == CLD_EXITED && info.si_status == 0;
        }
        if (errno == EINTR) continue;
        if (errno != EINVAL) return false;  // ECHILD: reaped by someone else
        const int status = reap(pid, true);
        return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
}

/// Flushes C and C++ standard streams, so a fork does not duplicate buffered output and an exiting worker does
/// not lose it.
PROCPOOL_DECL void flush_standard_streams() noexcept;

/// Counts the forks this process descends from (bumped in every child by a pthread_atfork handler), so an
/// object can tell cheaply that it is being used in a child forked after it was made.
inline std::atomic<unsigned>& fork_generation_counter() noexcept {
    static std::atomic<unsigned> counter{0};
    return counter;
}
inline unsigned fork_generation() noexcept {
    static const bool registered = [] {
        ::pthread_atfork(nullptr, nullptr, [] { fork_generation_counter().fetch_add(1, std::memory_order_relaxed); });
        return true;
    }();
    (void)registered;
    return fork_generation_counter().load(std::memory_order_relaxed);
}

/// The calling thread's kernel thread id, cached per thread (gettid() is a system call; a thread's id changes only
/// in a child forked from it, which fork_generation() tells).
inline pid_t current_thread_id() noexcept {
    thread_local pid_t tid = 0;
    thread_local unsigned generation = ~0u;
    const unsigned now = fork_generation();
    if (generation != now) {
        tid = ::gettid();
        generation = now;
    }
    return tid;
}

/// The CPUs this process may run on (its affinity mask), at least 1.
inline std::size_t usable_cpu_count() noexcept {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return static_cast<std::size_t>(n);
    }
    const unsigned hardware = std::thread::hardware_concurrency();
    return hardware == 0 ? 1 : hardware;
}

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/process.ipp"
#endif
