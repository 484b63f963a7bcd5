// procpool: AsyncResult<T>, the handle to a value a worker is computing (like Python's AsyncResult).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "procpool/detail/config.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/spin.hpp"
#include "procpool/errors.hpp"

namespace procpool {

namespace detail {

/// Reports an exception that escaped a user callback: it has nowhere else to go (Python prints it, too).
PROCPOOL_DECL void report_callback_exception(const char* what_callback = "an AsyncResult callback") noexcept;

/// A one-shot "ready" flag that threads of one process can wait on (spin first, then futex).
class ReadyFlag {
public:
    [[nodiscard]] bool is_set() const noexcept { return (word_.load(std::memory_order_acquire) & kSet) != 0; }

    /// Sets the flag (release) and wakes every waiter. Idempotent.
    void set() noexcept {
        const std::uint32_t previous = word_.exchange(kSet, std::memory_order_acq_rel);
        if ((previous & kWaiters) != 0) futex_wake(word_, INT_MAX, false);
    }

    /// Waits until set or `deadline`; returns is_set().
    PROCPOOL_DECL bool wait(Deadline deadline,
                            std::chrono::nanoseconds spin = std::chrono::microseconds(20)) const noexcept;

private:
    static constexpr std::uint32_t kSet = 1;
    static constexpr std::uint32_t kWaiters = 2;
    mutable std::atomic<std::uint32_t> word_{0};
};

/// Lets a thread that waits for a result do the pool's polling itself, instead of handing every result
/// through the pool's service thread: a round trip then involves two busy threads (the waiter and a worker)
/// rather than three.
class WaitHelper {
public:
    enum class Outcome { done, timed_out, busy };
    /// Polls the pool until ready(context): spinning for `budget` where spinning pays (then `timed_out`), or else
    /// asleep on the workers' doorbell as the pool's poller until ready, `deadline`, or until the pool needs the
    /// poller role back (then `timed_out`: sleep on your own flag). Returns `busy` at once if another thread polls.
    virtual Outcome help(bool (*ready)(const void*), const void* context, std::chrono::nanoseconds budget,
                         Deadline deadline) noexcept = 0;
    /// Throws PoolStateError in a process forked after the pool was built: its results arrive in the process that
    /// built it, never here, so a wait would not end.
    virtual void check_owner() const = 0;

protected:
    ~WaitHelper() = default;
};

/// How long a waiting thread polls for its result before it sleeps.
inline constexpr std::chrono::microseconds kHelpBudget{100};

/// The state an AsyncResult shares with the pool: completed exactly once, with a value or an exception.
template <class T>
class ResultState {
public:
    using Value = std::conditional_t<std::is_void_v<T>, std::monostate, T>;
    using SuccessCallback =
        std::conditional_t<std::is_void_v<T>, std::function<void()>, std::function<void(const Value&)>>;
    using ErrorCallback = std::function<void(std::exception_ptr)>;

    ResultState() = default;
    ResultState(const ResultState&) = delete;
    ResultState& operator=(const ResultState&) = delete;

    [[nodiscard]] bool ready() const noexcept { return ready_.is_set(); }

    /// Waits until completed or `deadline`: polls the pool itself for a moment, then sleeps. Throws
    /// PoolStateError instead of waiting in a process forked after the pool was built (the result would never
    /// arrive there).
    bool wait(Deadline deadline) const {
        if (ready_.is_set()) return true;
        std::chrono::nanoseconds spin = std::chrono::microseconds(20);
        if (std::shared_ptr<WaitHelper> helper = helper_.lock()) {
            helper->check_owner();
            auto budget = std::chrono::nanoseconds(kHelpBudget);
            if (deadline) budget = std::min(budget, std::chrono::nanoseconds(*deadline - MonotonicClock::now()));
            const auto outcome = helper->help(
                [](const void* self) { return static_cast<const ResultState*>(self)->ready(); }, this, budget,
                deadline);
            if (outcome == WaitHelper::Outcome::done) return true;
            if (outcome == WaitHelper::Outcome::timed_out) spin = {};  // polled long enough: sleep now
        }
        return ready_.wait(deadline, spin);
    }

    /// The pool whose polling a waiter may take over. Set once, before the state is shared.
    void set_helper(std::weak_ptr<WaitHelper> helper) noexcept { helper_ = std::move(helper); }

    /// Storage the producer may fill before completing (map results are decoded into it in place).
    /// Only the producer touches it before completion.
    Value& prepare() {
        if constexpr (std::is_default_constructible_v<Value>) {
            if (!value_) value_.emplace();
        }
        return *value_;
    }

    /// Completes with the prepared (or given) value. Returns false if already completed (the value is dropped).
    bool complete_value() { return complete(nullptr); }
    template <class... Args>
    bool complete_value(Args&&... args) {
        {
            std::lock_guard lock(mutex_);
            if (done_) return false;
            value_.emplace(std::forward<Args>(args)...);
        }
        return complete(nullptr);
    }
    bool complete_error(std::exception_ptr error) { return complete(std::move(error)); }

    /// The value after completion; rethrows the task's exception. Requires ready().
    const Value& value() const {
        if (error_) std::rethrow_exception(error_);
        return *value_;
    }
    Value take_value() {
        if (error_) std::rethrow_exception(error_);
        return std::move(*value_);
    }
    [[nodiscard]] bool failed() const noexcept { return static_cast<bool>(error_); }

    /// Runs the callback now if completed, otherwise when the state completes (in the completing thread).
    void on_success(SuccessCallback callback) {
        {
            std::lock_guard lock(mutex_);
            if (!done_) {
                on_success_.push_back(std::move(callback));
                return;
            }
        }
        if (!error_) run_success(callback);
    }
    void on_error(ErrorCallback callback) {
        {
            std::lock_guard lock(mutex_);
            if (!done_) {
                on_error_.push_back(std::move(callback));
                return;
            }
        }
        if (error_) run_error(callback);
    }

private:
    bool complete(std::exception_ptr error) {
        std::vector<SuccessCallback> successes;
        std::vector<ErrorCallback> errors;
        {
            std::lock_guard lock(mutex_);
            if (done_) return false;
            done_ = true;
            if (error) {
                error_ = std::move(error);
            } else if (!value_) {
                if constexpr (std::is_default_constructible_v<Value>) value_.emplace();
            }
            successes.swap(on_success_);
            errors.swap(on_error_);
        }
        // Callbacks run before waiters wake (as in Python): after get() returns, they have finished.
        if (error_) {
            for (auto& callback : errors) run_error(callback);
        } else {
            for (auto& callback : successes) run_success(callback);
        }
        ready_.set();
        return true;
    }

    void run_success(SuccessCallback& callback) noexcept {
        try {
            if constexpr (std::is_void_v<T>) callback();
            else callback(*value_);
        } catch (...) {
            report_callback_exception();
        }
    }
    void run_error(ErrorCallback& callback) noexcept {
        try {
            callback(error_);
        } catch (...) {
            report_callback_exception();
        }
    }

    ReadyFlag ready_;
    std::weak_ptr<WaitHelper> helper_;
    std::mutex mutex_;
    bool done_ = false;
    std::optional<Value> value_;
    std::exception_ptr error_;
    std::vector<SuccessCallback> on_success_;
    std::vector<ErrorCallback> on_error_;
};

}  // namespace detail

/// The result of apply_async/map_async/starmap_async. Copies share one result. All members are thread-safe.
template <class T>
class AsyncResult {
    using State = detail::ResultState<T>;

public:
    using value_type = T;

    /// An empty handle (valid() is false); every other member then throws PoolStateError.
    AsyncResult() = default;
    explicit AsyncResult(std::shared_ptr<State> state) noexcept : state_(std::move(state)) {}

    [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(state_); }

    /// Blocks until the task is done; returns its value or rethrows its exception. May be called repeatedly.
    decltype(auto) get() const& {
        wait();
        if constexpr (std::is_void_v<T>) {
            (void)state().value();
        } else {
            return static_cast<const T&>(state().value());
        }
    }
    /// Blocks until done; moves the value out when this is the last handle to it.
    T get() && {
        wait();
        if constexpr (std::is_void_v<T>) {
            (void)state().value();
        } else {
            if (state_.use_count() == 1) return state().take_value();
            return state().value();
        }
    }

    /// Like get(), but throws TimeoutError if the task is not done within `timeout` (the task keeps running).
    template <class Rep, class Period>
    decltype(auto) get(std::chrono::duration<Rep, Period> timeout) const& {
        if (!wait(timeout)) throw TimeoutError("procpool: the result was not ready in time");
        return get();
    }
    template <class Rep, class Period>
    T get(std::chrono::duration<Rep, Period> timeout) && {
        if (!wait(timeout)) throw TimeoutError("procpool: the result was not ready in time");
        return std::move(*this).get();
    }

    /// Blocks until the task is done (successfully or not). Throws PoolStateError, instead of blocking for good,
    /// in a process forked after the pool was built (results reach only the process that built it).
    void wait() const { state().wait(std::nullopt); }
    /// Waits at most `timeout`; returns true when the task is done. Throws like wait().
    template <class Rep, class Period>
    bool wait(std::chrono::duration<Rep, Period> timeout) const {
        return state().wait(detail::deadline_after(timeout));
    }

    /// True when the task is done. Never blocks.
    [[nodiscard]] bool ready() const { return state().ready(); }

    /// True when the task completed without an exception; throws PoolStateError when it is not done yet.
    [[nodiscard]] bool successful() const {
        if (!ready()) throw PoolStateError("procpool: successful() called on a result that is not ready");
        return !state().failed();
    }

    /// Calls `callback` with the value once the task succeeds: at once in this thread if it already has, else in
    /// the thread that receives the result (the pool's service thread, or a thread waiting in get()/wait() on the
    /// same pool that reads the result rings itself), before get()/wait() return. Keep it short; it must not wait
    /// for results of the same pool (its own included) nor call join(); terminate() is allowed.
    AsyncResult& on_success(typename State::SuccessCallback callback) {
        state().on_success(std::move(callback));
        return *this;
    }
    /// Calls `callback` with the exception once the task fails (same threading as on_success).
    AsyncResult& on_error(typename State::ErrorCallback callback) {
        state().on_error(std::move(callback));
        return *this;
    }

private:
    State& state() const {
        if (!state_) throw PoolStateError("procpool: this AsyncResult is empty");
        return *state_;
    }

    std::shared_ptr<State> state_;
};

}  // namespace procpool

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/async_result.ipp"
#endif
