// procpool internals: the fork server, a single-threaded helper process forked when a pool is built.
//
// Forking from a process that already runs threads is unsafe (the child inherits locks held by threads that do not
// exist in it), and the pool's parent runs a service thread. So every worker, the first ones and every replacement,
// is forked by this helper, which never starts a thread. It is the workers' parent: it forks them, signals them
// on request, reaps them, and reports each spawn and each death (with its wait status) to the pool over a
// SOCK_SEQPACKET socket, ringing the pool's doorbell so the service thread wakes.
//
// It watches the pool's process through a pidfd: when that process dies (even by SIGKILL), the server kills its
// workers and exits; workers also carry PR_SET_PDEATHSIG(SIGKILL) tied to the server. A pidfd is used rather than
// PR_SET_PDEATHSIG for the server itself because the latter fires when the *thread* that built the pool exits.
#pragma once

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "procpool/detail/events.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/detail/shared_layout.hpp"

namespace procpool::detail {

enum ServerOp : std::uint32_t { kSpawnWorker = 1, kSignalWorker = 2, kShutdownServer = 3, kTerminateServer = 4 };

struct ServerRequest {
    std::uint32_t op;
    std::uint32_t slot;
    std::int32_t signal;  // for kSignalWorker
    std::uint32_t reserved;
};

struct ForkServerConfig {
    int socket = -1;
    pid_t parent = 0;
    std::size_t slots = 0;
    ControlBlock* control = nullptr;
    /// Runs in a freshly forked worker; must not return.
    void (*become_worker)(void* context, std::size_t slot, pid_t server_pid) noexcept = nullptr;
    void* context = nullptr;
};

class ForkServer {
public:
    explicit ForkServer(const ForkServerConfig& config) : config_(config), children_(config.slots) {}

    [[noreturn]] void run() noexcept {
        // Ctrl-C reaches the whole process group: let the pool's process decide, workers follow its fate.
        set_signal_disposition(SIGINT, SIG_IGN);
        // A SIG_IGN inherited from the program would make children unreapable.
        set_signal_disposition(SIGCHLD, SIG_DFL);
        reset_inherited_signal_handling();
        self_ = ::getpid();
        spawn_first_workers();
        parent_fd_ = pidfd_open(config_.parent);
        if (parent_fd_ < 0 || ::getppid() != config_.parent) finish(true);

        std::vector<pollfd> fds;
        std::vector<std::size_t> fd_slot;
        for (;;) {
            fds.assign({pollfd{config_.socket, POLLIN, 0}, pollfd{parent_fd_, POLLIN, 0}});
            fd_slot.clear();
            for (std::size_t slot = 0; slot < children_.size(); ++slot) {
                if (children_[slot].pid != 0) {
                    fds.push_back(pollfd{children_[slot].pidfd, POLLIN, 0});
                    fd_slot.push_back(slot);
                }
            }
            if (::poll(fds.data(), fds.size(), -1) < 0) continue;  // EINTR
            if (fds[1].revents != 0) finish(true);                 // the pool's process is gone
            for (std::size_t i = 2; i < fds.size(); ++i) {
                if (fds[i].revents != 0) reap_slot(fd_slot[i - 2], false);
            }
            if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) serve_request();
            if (shutting_down_ && live_children() == 0) finish(false);
        }
    }

private:
    struct Child {
        pid_t pid = 0;
        int pidfd = -1;
    };

    /// Handlers the program installed for itself (a crash reporter, a test framework, a shutdown handler, a
    /// sanitizer) must not run in a worker: a crash kills the worker with its signal (WorkerCrashed names it), and
    /// the SIGTERM the pool sends a worker past its task_timeout ends it at once instead of running the program's
    /// handler or being held back by a blocked mask. Set here once, the workers inherit it; an initializer may
    /// install its own.
    static void reset_inherited_signal_handling() noexcept {
        sigset_t ours;
        ::sigemptyset(&ours);
        for (int signal : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS, SIGTERM}) {
            set_signal_disposition(signal, SIG_DFL);
            ::sigaddset(&ours, signal);
        }
        ::pthread_sigmask(SIG_UNBLOCK, &ours, nullptr);
    }

    void serve_request() noexcept {
        ServerRequest request{};
        const ssize_t n = receive_packet(config_.socket, &request, sizeof request, false);
        if (n == 0) finish(true);  // the pool closed its end
        if (n != static_cast<ssize_t>(sizeof request)) return;
        switch (request.op) {
            case kSpawnWorker:
                if (!shutting_down_ && request.slot < children_.size() && children_[request.slot].pid == 0) {
                    report(spawn(request.slot));
                }
                break;
            case kSignalWorker:
                if (request.slot < children_.size() && children_[request.slot].pid != 0) {
                    ::kill(children_[request.slot].pid, request.signal);  // still unreaped: the pid is ours
                }
                break;
            case kShutdownServer: shutting_down_ = true; break;
            case kTerminateServer: finish(true);
            default: break;
        }
    }

    /// Forks one worker into every slot, back to back (the pool's constructor waits for all of them), then
    /// reports them in slot order. Stops at the first fork that fails: the pool gives up on that report.
    void spawn_first_workers() noexcept {
        std::vector<WorkerEvent> reports;
        reports.reserve(children_.size());
        for (std::size_t slot = 0; slot < children_.size(); ++slot) {
            reports.push_back(spawn(slot));
            if (reports.back().kind != kWorkerSpawned) break;
        }
        for (const WorkerEvent& r : reports) report(r);
    }

    /// Forks a worker into `slot`; returns the report for the pool (kWorkerSpawned or kSpawnFailed).
    WorkerEvent spawn(std::size_t slot) noexcept {
        const pid_t pid = ::fork();
        if (pid == 0) {
            ::close(config_.socket);
            close_quietly(parent_fd_);  // (not open yet while the first workers are forked)
            for (Child& child : children_) close_quietly(child.pidfd);
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != self_) exit_now(1);  // the server died before prctl took effect
            config_.become_worker(config_.context, slot, self_);
            exit_now(1);  // not reached
        }
        const auto index = static_cast<std::uint32_t>(slot);
        if (pid < 0) return WorkerEvent{kSpawnFailed, index, 0, 0, 0, errno};
        const int pidfd = pidfd_open(pid);
        if (pidfd < 0) {
            const int error = errno;
            ::kill(pid, SIGKILL);
            reap(pid, true);
            return WorkerEvent{kSpawnFailed, index, 0, 0, 0, error};
        }
        children_[slot] = Child{pid, pidfd};
        return WorkerEvent{kWorkerSpawned, index, pid, 0, 0, 0};
    }

    void reap_slot(std::size_t slot, bool block) noexcept {
        Child& child = children_[slot];
        const int status = reap(child.pid, block);
        if (status == -2) return;  // not finished after all
        WorkerEvent report_{kWorkerExited, static_cast<std::uint32_t>(slot), child.pid, 0, 0, 0};
        if (status >= 0 && WIFSIGNALED(status)) report_.signal = WTERMSIG(status);
        if (status >= 0 && WIFEXITED(status)) report_.exit_code = WEXITSTATUS(status);
        close_quietly(child.pidfd);
        child.pid = 0;
        report(report_);
    }

    void report(const WorkerEvent& r) noexcept {
        if (!send_packet(config_.socket, &r, sizeof r)) return;
        config_.control->reports_posted.fetch_add(1, std::memory_order_release);
        config_.control->parent_bell.ring();
    }

    [[nodiscard]] std::size_t live_children() const noexcept {
        std::size_t n = 0;
        for (const Child& child : children_) n += child.pid != 0 ? 1 : 0;
        return n;
    }

    /// Ends the server; with `kill_workers`, SIGKILLs and reaps every worker first (reporting each death).
    [[noreturn]] void finish(bool kill_workers) noexcept {
        if (kill_workers) {
            for (Child& child : children_) {
                if (child.pid != 0) ::kill(child.pid, SIGKILL);
            }
            for (std::size_t slot = 0; slot < children_.size(); ++slot) {
                if (children_[slot].pid != 0) reap_slot(slot, true);
            }
        }
        // Goodbye: the parent's service thread sleeps until now instead of polling waitpid() while we exit.
        config_.control->server_exiting.store(1, std::memory_order_release);
        config_.control->parent_bell.ring();
        exit_now(0);
    }

    ForkServerConfig config_;
    std::vector<Child> children_;
    pid_t self_ = 0;
    int parent_fd_ = -1;
    bool shutting_down_ = false;
};

}  // namespace procpool::detail
