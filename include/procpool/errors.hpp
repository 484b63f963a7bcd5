// procpool: the error types. Every error procpool raises itself derives from procpool::Error.
#pragma once

#include <chrono>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <string>
#include <sys/types.h>
#include <utility>

namespace procpool {

/// Base of every error procpool raises itself; a std::runtime_error.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// A task threw something other than the standard exceptions that travel as themselves and the types registered
/// with procpool::register_exception<E>(). `type_name()` is the thrown type's demangled name, `what()` its message
/// (for a thrown value that is not a std::exception, what was thrown: "procpool: the task threw int 42").
class RemoteError : public Error {
public:
    RemoteError(std::string type_name, const std::string& message) : Error(message), type_name_(std::move(type_name)) {}
    [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }

private:
    std::string type_name_;
};

/// The worker process running the task died (signal, exit, abort). Only the tasks that worker held fail;
/// the worker is replaced and the pool goes on.
class WorkerCrashed : public Error {
public:
    /// `signal` is the signal that killed the worker (0 if it exited); `exit_code` its exit status (0 if killed);
    /// `where` the MPI rank and host it ran on (empty for a worker of this machine's pool).
    WorkerCrashed(pid_t pid, int signal, int exit_code, std::string where = {})
        : Error(describe(pid, signal, exit_code, where)), pid_(pid), signal_(signal), exit_code_(exit_code),
          where_(std::move(where)) {}
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    [[nodiscard]] int signal() const noexcept { return signal_; }
    [[nodiscard]] int exit_code() const noexcept { return exit_code_; }
    /// Over MPI, the rank and host the worker ran on ("rank 2 on node07"); empty otherwise.
    [[nodiscard]] const std::string& where() const noexcept { return where_; }

private:
    static std::string describe(pid_t pid, int signal, int exit_code, const std::string& where) {
        std::string text = "procpool: worker " + std::to_string(pid);
        if (!where.empty()) text += " on " + where;
        if (signal != 0) {
            const char* name = sigabbrev_np(signal);
            text += " was killed by signal " + std::to_string(signal);
            if (name != nullptr) text += std::string(" (SIG") + name + ")";
        } else {
            text += " exited with code " + std::to_string(exit_code);
        }
        return text + " while running this task";
    }

    pid_t pid_;
    int signal_;
    int exit_code_;
    std::string where_;
};

/// The task ran past PoolOptions::task_timeout; its worker was killed and replaced.
class TaskTimeout : public Error {
public:
    /// `where`: the MPI rank and host the worker ran on (empty for a worker of this machine's pool).
    TaskTimeout(pid_t pid, std::chrono::milliseconds timeout, std::string where = {})
        : Error("procpool: task ran past its timeout of " + std::to_string(timeout.count()) + " ms; worker " +
                std::to_string(pid) + (where.empty() ? std::string() : " on " + where) + " was killed"),
          pid_(pid), timeout_(timeout), where_(std::move(where)) {}
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }
    /// Over MPI, the rank and host the worker ran on; empty otherwise.
    [[nodiscard]] const std::string& where() const noexcept { return where_; }

private:
    pid_t pid_;
    std::chrono::milliseconds timeout_;
    std::string where_;
};

/// AsyncResult::get(duration) ran out of time; the task keeps running.
class TimeoutError : public Error {
public:
    using Error::Error;
};

/// Misuse of the pool's life cycle: submitting after close()/terminate(), join() before close(), a result
/// failed by terminate(), successful() on a result that is not ready.
class PoolStateError : public Error {
public:
    using Error::Error;
};

/// A value could not be encoded or decoded at run time: truncated or corrupt data, or a serialize() that threw (its
/// what() names the type and the exception serialize() threw, which is not rethrown as itself: a task's own failure
/// stays distinguishable from a value that cannot travel, as with Python's MaybeEncodingError).
class SerializationError : public Error {
public:
    using Error::Error;
};

/// Barrier::wait() on a barrier that was broken: a party died while waiting, a wait timed out, or abort().
class BrokenBarrierError : public Error {
public:
    using Error::Error;
};

// ---- shared dicts, lists, pipes and managed segments (containers.hpp, pipe.hpp, managed_segment.hpp) -------------

/// Connection::recv() on a pipe end whose peer (the process that last used the other end) has died and left
/// nothing more to receive (poll() returns true then). Like Python's EOFError from Connection.recv().
class BrokenPipeError : public Error {
public:
    using Error::Error;
};

/// A ManagedSegment whose allocator or name index was held by a process that died: Boost.Interprocess' heap may be
/// half-updated, so every use of the segment from then on throws this instead of reading it.
class BrokenSegmentError : public Error {
public:
    using Error::Error;
};

}  // namespace procpool
