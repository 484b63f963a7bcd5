// procpool: locks, semaphores, events, conditions and barriers shared between processes.
//
// All are handles: copies share one object, and they pass to tasks as arguments or captures, whether made before
// or after the pool. They live in the shared heap (detail/shared_heap.hpp): no name, nothing in /dev/shm, freed
// with the last handle in the process that made them. A handle a worker received stays valid at least until the
// task that received it has finished; a worker may keep it longer only while the maker still holds the object.
//
// Nothing here can be wedged by a process dying inside it: locks are robust (the next acquirer takes a lock over
// and owner_died() tells it), every wait is on a futex word that a dead waiter simply leaves, and a Barrier one of
// whose parties died while waiting breaks (BrokenBarrierError) instead of waiting forever. Every wait has a timed
// form on the monotonic clock and retries EINTR.
#pragma once

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <sys/types.h>
#include <unistd.h>

#include "procpool/async_result.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/robust_mutex.hpp"
#include "procpool/detail/shared_handle.hpp"
#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"

namespace procpool {

namespace detail {

/// Waits on a futex word in shared memory while it holds `seen`, until `deadline`. Returns false on timeout.
inline bool shared_wait(std::atomic<std::uint32_t>& word, std::uint32_t seen, Deadline deadline) {
    const bool in_time = futex_wait(word, seen, deadline, true);
    return in_time && !(deadline && MonotonicClock::now() >= *deadline);
}

/// Start time of a process (field 22 of /proc/PID/stat), 0 if there is none: a pid plus its start time names a
/// process even after the pid is reused.
inline std::uint64_t process_start_time(pid_t pid) {
    const std::string path = "/proc/" + std::to_string(pid) + "/stat";
    std::FILE* file = std::fopen(path.c_str(), "r");
    if (file == nullptr) return 0;
    char text[1024];
    const std::size_t n = std::fread(text, 1, sizeof text - 1, file);
    std::fclose(file);
    text[n] = '\0';
    const char* at = std::strrchr(text, ')');
    if (at == nullptr) return 0;
    int field = 2;
    for (++at; *at != '\0' && field < 22; ++at) {
        if (*at == ' ') ++field;
    }
    return std::strtoull(at, nullptr, 10);
}

/// The common part of Lock and RLock.
template <class Self, ObjectKind Kind>
class LockBase : public SharedHandle<Self, Kind> {
public:
    /// Blocks until acquired. A lock whose holder died is taken over (see owner_died()). A Lock (not an RLock)
    /// that the calling thread holds already throws PoolStateError instead of deadlocking (Python would hang).
    void acquire() const { mutex().lock(); }
    /// Waits at most `timeout`; true when acquired. A Lock the calling thread holds already is not acquired: false
    /// once `timeout` has passed (as Python's `lock.acquire(timeout=t)`).
    template <class Rep, class Period>
    bool acquire(std::chrono::duration<Rep, Period> timeout) const {
        return mutex().lock(deadline_after(timeout));
    }
    /// Releases; throws PoolStateError if the calling thread does not hold it.
    void release() const { mutex().unlock(); }

    // Lockable / TimedLockable, for std::lock_guard, std::unique_lock and std::scoped_lock. Never blocks in
    // try_lock(): false when another thread (or this one, for a Lock) holds it, as `lock.acquire(False)`.
    void lock() const { acquire(); }
    bool try_lock() const { return mutex().try_lock(); }
    void unlock() const { release(); }
    template <class Rep, class Period>
    bool try_lock_for(std::chrono::duration<Rep, Period> timeout) const {
        return acquire(timeout);
    }
    template <class Clock, class Duration>
    bool try_lock_until(std::chrono::time_point<Clock, Duration> when) const {
        return acquire(when - Clock::now());
    }

    // ---- Boost.Interprocess' mutex interface (lock, try_lock, timed_lock, unlock) --------------------------------
    // So that boost::interprocess::scoped_lock<procpool::Lock> works, its timed forms included.
    /// Waits until `abs_time` at most, read as Boost.Interprocess reads it: UTC (pos_infin waits forever,
    /// neg_infin and not_a_date_time do not wait). True when acquired. Blocks; thread-safe.
    /// `abs_time` is a boost::posix_time::ptime (a template, so this header needs no Boost.Date_Time).
    template <detail::BoostPtime Ptime>
    bool timed_lock(const Ptime& abs_time) const {
        return detail::lock_until_utc(mutex(), abs_time);
    }

    /// True while the calling thread holds the lock and took it over from a process that died holding it: the
    /// data it guards may be half-updated. Cleared by release().
    [[nodiscard]] bool owner_died() const noexcept { return mutex().recovered.load() != 0 && mutex().held(); }
    /// True when the calling thread holds the lock.
    [[nodiscard]] bool held() const noexcept { return mutex().held(); }

protected:
    explicit LockBase(bool recursive) : SharedHandle<Self, Kind>(SharedRef::create(sizeof(RobustMutex), Kind)) {
        mutex().init(recursive);
    }
    explicit LockBase(SharedRef ref) : SharedHandle<Self, Kind>(std::move(ref)) {}
    [[nodiscard]] RobustMutex& mutex() const noexcept { return this->template object<RobustMutex>(); }
};

}  // namespace detail

/// A mutual-exclusion lock shared between processes (like multiprocessing.Lock), owned by the thread that
/// acquired it. Robust: if its holder dies, the next acquirer gets it and owner_died() is true.
class Lock : public detail::LockBase<Lock, detail::kLockObject> {
public:
    /// Makes a new lock. Throws std::bad_alloc when the shared heap is exhausted.
    Lock() : LockBase(false) {}

private:
    friend class detail::SharedHandle<Lock, detail::kLockObject>;
    template <class T>
    friend class SharedArray;
    template <class T>
    friend class SharedValue;
    explicit Lock(detail::SharedRef ref) : LockBase(std::move(ref)) {}
};

/// A recursive lock: the thread holding it may acquire it again, and must release it as often.
class RLock : public detail::LockBase<RLock, detail::kRLockObject> {
public:
    RLock() : LockBase(true) {}

private:
    friend class detail::SharedHandle<RLock, detail::kRLockObject>;
    explicit RLock(detail::SharedRef ref) : LockBase(std::move(ref)) {}
};

namespace detail {

struct SemaphoreState {
    std::atomic<std::uint32_t> value;
    std::atomic<std::uint32_t> sleepers;
    std::uint32_t initial;
    std::uint32_t bounded;
};

template <class Self, bool Bounded>
class SemaphoreBase : public SharedHandle<Self, kSemaphoreObject> {
public:
    /// Takes one unit, blocking while there is none.
    void acquire() const { (void)acquire_until(std::nullopt); }
    /// Waits at most `timeout`; true when a unit was taken.
    template <class Rep, class Period>
    bool acquire(std::chrono::duration<Rep, Period> timeout) const {
        return acquire_until(deadline_after(timeout));
    }
    /// Gives one unit back and wakes one waiter. A BoundedSemaphore throws PoolStateError past its start value.
    void release() const {
        SemaphoreState& s = state();
        if constexpr (Bounded) {
            std::uint32_t v = s.value.load(std::memory_order_relaxed);
            do {
                if (v >= s.initial) {
                    throw PoolStateError("procpool: BoundedSemaphore released more often than acquired");
                }
            } while (!s.value.compare_exchange_weak(v, v + 1, std::memory_order_release));
        } else {
            s.value.fetch_add(1, std::memory_order_release);
        }
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (s.sleepers.load(std::memory_order_relaxed) != 0) futex_wake(s.value, 1, true);
    }
    /// Units available now (it may change at once).
    [[nodiscard]] std::uint32_t value() const noexcept { return state().value.load(); }

protected:
    explicit SemaphoreBase(std::uint32_t initial)
        : SharedHandle<Self, kSemaphoreObject>(SharedRef::create(sizeof(SemaphoreState), kSemaphoreObject)) {
        SemaphoreState* s = new (this->ref_.address()) SemaphoreState();
        s->value.store(initial);
        s->initial = initial;
        s->bounded = Bounded ? 1 : 0;
    }
    explicit SemaphoreBase(SharedRef ref) : SharedHandle<Self, kSemaphoreObject>(std::move(ref)) {}

private:
    [[nodiscard]] SemaphoreState& state() const noexcept { return this->template object<SemaphoreState>(); }
    bool acquire_until(Deadline deadline) const {
        SemaphoreState& s = state();
        for (;;) {
            std::uint32_t v = s.value.load(std::memory_order_relaxed);
            while (v != 0) {
                if (s.value.compare_exchange_weak(v, v - 1, std::memory_order_acquire)) return true;
            }
            s.sleepers.fetch_add(1, std::memory_order_relaxed);
            std::atomic_thread_fence(std::memory_order_seq_cst);
            const bool in_time = s.value.load(std::memory_order_relaxed) != 0 || shared_wait(s.value, 0, deadline);
            s.sleepers.fetch_sub(1, std::memory_order_relaxed);
            if (!in_time) {
                v = s.value.load(std::memory_order_relaxed);
                while (v != 0) {  // a last look, so a unit released at the deadline is not missed
                    if (s.value.compare_exchange_weak(v, v - 1, std::memory_order_acquire)) return true;
                }
                return false;
            }
        }
    }
};

}  // namespace detail

/// A counting semaphore shared between processes (like multiprocessing.Semaphore). A process that dies holding
/// units does not give them back (semaphores have no owner); one dying while it waits harms no one.
class Semaphore : public detail::SemaphoreBase<Semaphore, false> {
public:
    explicit Semaphore(std::uint32_t value = 1) : SemaphoreBase(value) {}

private:
    friend class detail::SharedHandle<Semaphore, detail::kSemaphoreObject>;
    explicit Semaphore(detail::SharedRef ref) : SemaphoreBase(std::move(ref)) {}
};

/// A semaphore that refuses to be released past its start value (PoolStateError).
class BoundedSemaphore : public detail::SemaphoreBase<BoundedSemaphore, true> {
public:
    explicit BoundedSemaphore(std::uint32_t value = 1) : SemaphoreBase(value) {}

private:
    friend class detail::SharedHandle<BoundedSemaphore, detail::kSemaphoreObject>;
    explicit BoundedSemaphore(detail::SharedRef ref) : SemaphoreBase(std::move(ref)) {}
};

/// A flag processes can wait for (like multiprocessing.Event).
class Event : public detail::SharedHandle<Event, detail::kEventObject> {
public:
    Event() : SharedHandle(detail::SharedRef::create(sizeof(State), detail::kEventObject)) {
        new (ref_.address()) State();
    }

    /// Sets the flag and wakes every waiter.
    void set() const {
        State& s = state();
        s.flag.store(1, std::memory_order_release);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (s.sleepers.load(std::memory_order_relaxed) != 0) detail::futex_wake(s.flag, INT_MAX, true);
    }
    void clear() const { state().flag.store(0, std::memory_order_release); }
    [[nodiscard]] bool is_set() const { return state().flag.load(std::memory_order_acquire) != 0; }
    /// Blocks until the flag is set.
    void wait() const { (void)wait_until(std::nullopt); }
    /// Waits at most `timeout`; returns the flag.
    template <class Rep, class Period>
    bool wait(std::chrono::duration<Rep, Period> timeout) const {
        return wait_until(detail::deadline_after(timeout));
    }

private:
    friend class detail::SharedHandle<Event, detail::kEventObject>;
    struct State {
        std::atomic<std::uint32_t> flag{0};
        std::atomic<std::uint32_t> sleepers{0};
    };
    explicit Event(detail::SharedRef ref) : SharedHandle(std::move(ref)) {}
    [[nodiscard]] State& state() const noexcept { return object<State>(); }

    bool wait_until(detail::Deadline deadline) const {
        State& s = state();
        while (s.flag.load(std::memory_order_acquire) == 0) {
            s.sleepers.fetch_add(1, std::memory_order_relaxed);
            std::atomic_thread_fence(std::memory_order_seq_cst);
            const bool in_time = s.flag.load(std::memory_order_relaxed) != 0 ||
                                 detail::shared_wait(s.flag, 0, deadline);
            s.sleepers.fetch_sub(1, std::memory_order_relaxed);
            if (!in_time) return s.flag.load(std::memory_order_acquire) != 0;
        }
        return true;
    }
};

/// A condition variable shared between processes (like multiprocessing.Condition), with its own recursive,
/// robust lock. wait() must be called with the lock held; it releases it (every recursion level), sleeps until
/// notified (or spuriously: check your predicate, or use wait_for with one), and takes it back.
class Condition : public detail::SharedHandle<Condition, detail::kConditionObject> {
public:
    Condition() : SharedHandle(detail::SharedRef::create(sizeof(State), detail::kConditionObject)) {
        State* s = new (ref_.address()) State();
        s->mutex.init(true);
    }

    /// Blocks until the condition's lock is acquired (recursive: the holder may acquire it again).
    void acquire() const { state().mutex.lock(); }
    /// Waits at most `timeout`; true when acquired.
    template <class Rep, class Period>
    bool acquire(std::chrono::duration<Rep, Period> timeout) const {
        return state().mutex.lock(detail::deadline_after(timeout));
    }
    /// Releases one level; throws PoolStateError if the calling thread does not hold it.
    void release() const { state().mutex.unlock(); }
    void lock() const { acquire(); }
    bool try_lock() const { return state().mutex.try_lock(); }
    void unlock() const { release(); }
    /// True while the calling thread holds the lock and took it over from a process that died holding it.
    [[nodiscard]] bool owner_died() const noexcept {
        return state().mutex.recovered.load() != 0 && state().mutex.held();
    }

    /// Releases the lock, waits for a notification, takes the lock back. Throws PoolStateError without the lock.
    void wait() const { (void)wait_until(std::nullopt); }
    /// Like wait(), at most `timeout`; false when it timed out.
    template <class Rep, class Period>
    bool wait(std::chrono::duration<Rep, Period> timeout) const {
        return wait_until(detail::deadline_after(timeout));
    }
    /// Waits until `predicate()` is true (checked with the lock held); false if `timeout` passed first.
    template <class Predicate, class Rep, class Period>
    bool wait_for(Predicate predicate, std::chrono::duration<Rep, Period> timeout) const {
        const detail::Deadline deadline = detail::deadline_after(timeout);
        while (!predicate()) {
            if (!wait_until(deadline)) return predicate();
        }
        return true;
    }
    /// Wakes up to `n` waiters. Call with the lock held.
    void notify(std::uint32_t n = 1) const { wake(static_cast<int>(std::min<std::uint32_t>(n, INT_MAX))); }
    void notify_all() const { wake(INT_MAX); }

private:
    friend class detail::SharedHandle<Condition, detail::kConditionObject>;
    struct State {
        detail::RobustMutex mutex;
        std::atomic<std::uint32_t> sequence{0};
        std::atomic<std::uint32_t> sleepers{0};
    };
    explicit Condition(detail::SharedRef ref) : SharedHandle(std::move(ref)) {}
    [[nodiscard]] State& state() const noexcept { return object<State>(); }

    void wake(int n) const {
        State& s = state();
        s.sequence.fetch_add(1, std::memory_order_release);
        if (s.sleepers.load(std::memory_order_relaxed) != 0) detail::futex_wake(s.sequence, n, true);
    }

    bool wait_until(detail::Deadline deadline) const {
        State& s = state();
        if (!s.mutex.held()) throw PoolStateError("procpool: Condition::wait() without holding its lock");
        const std::uint32_t seen = s.sequence.load(std::memory_order_acquire);
        s.sleepers.fetch_add(1, std::memory_order_relaxed);
        const std::uint32_t depth = s.mutex.depth;
        for (std::uint32_t i = 0; i < depth; ++i) s.mutex.unlock();
        const bool in_time = detail::shared_wait(s.sequence, seen, deadline);
        s.sleepers.fetch_sub(1, std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < depth; ++i) s.mutex.lock();
        return in_time;
    }
};

/// A barrier for a fixed number of parties (like multiprocessing.Barrier). wait() returns a distinct index in
/// [0, parties) to each party of a round. If a party that was waiting dies, a wait times out, or abort() is
/// called, the barrier breaks: every waiter and every later wait() throws BrokenBarrierError until reset().
/// (A party that dies before it reaches wait() cannot be told from a slow one: use the timed form.)
class Barrier : public detail::SharedHandle<Barrier, detail::kBarrierObject> {
public:
    /// `parties` >= 1, else std::invalid_argument.
    explicit Barrier(std::uint32_t parties) : SharedHandle(create(parties)) {}

    /// Blocks until `parties` parties wait; throws BrokenBarrierError if the barrier is or becomes broken.
    std::size_t wait() const { return wait_until(std::nullopt); }
    /// Like wait(); a timeout breaks the barrier (as in Python) and throws BrokenBarrierError.
    template <class Rep, class Period>
    std::size_t wait(std::chrono::duration<Rep, Period> timeout) const {
        return wait_until(detail::deadline_after(timeout));
    }
    /// Breaks the barrier: current and later waiters throw BrokenBarrierError.
    void abort() const {
        State& s = state();
        s.mutex.lock();
        break_locked(s);
        s.mutex.unlock();
    }
    /// Makes a broken barrier usable again (waiters of the current round are released as broken).
    void reset() const {
        State& s = state();
        s.mutex.lock();
        s.resets.fetch_add(1, std::memory_order_release);
        if (s.count != 0) break_locked(s);
        s.count = 0;
        s.broken.store(0, std::memory_order_release);
        s.mutex.unlock();
    }
    [[nodiscard]] bool broken() const { return state().broken.load(std::memory_order_acquire) != 0; }
    [[nodiscard]] std::uint32_t parties() const { return state().parties; }
    /// Parties waiting in the current round.
    [[nodiscard]] std::uint32_t n_waiting() const { return state().count; }

private:
    friend class detail::SharedHandle<Barrier, detail::kBarrierObject>;
    struct Party {
        pid_t pid;
        std::uint64_t start_time;
    };
    struct State {
        detail::RobustMutex mutex;
        std::uint32_t parties;
        std::uint32_t count;                // parties waiting in this round
        std::atomic<std::uint32_t> round;   // futex word: bumped when a round completes or breaks
        std::atomic<std::uint32_t> broken;  // sticky until reset()
        std::atomic<std::uint32_t> resets;  // bumped by reset(): waiters of the reset round fail
        Party waiting[1];                   // `parties` entries
    };
    static constexpr auto kLivenessPeriod = std::chrono::milliseconds(50);

    static detail::SharedRef create(std::uint32_t parties) {
        if (parties == 0) throw std::invalid_argument("procpool: a Barrier needs at least one party");
        detail::SharedRef ref = detail::SharedRef::create(sizeof(State) + parties * sizeof(Party),
                                                          detail::kBarrierObject);
        State* s = new (ref.address()) State();
        s->mutex.init(false);
        s->parties = parties;
        return ref;
    }
    explicit Barrier(detail::SharedRef ref) : SharedHandle(std::move(ref)) {}
    [[nodiscard]] State& state() const noexcept { return object<State>(); }

    /// Locks; a lock taken over from a party that died inside breaks the barrier (its count may be half-done).
    static void lock(State& s) {
        s.mutex.lock();
        if (s.mutex.recovered.load() != 0) {
            break_locked(s);
            s.count = 0;
        }
    }
    static void break_locked(State& s) {
        s.broken.store(1, std::memory_order_release);
        s.round.fetch_add(1, std::memory_order_release);
        detail::futex_wake(s.round, INT_MAX, true);
    }
    [[noreturn]] static void throw_broken() { throw BrokenBarrierError("procpool: the barrier is broken"); }

    std::size_t wait_until(detail::Deadline deadline) const {
        State& s = state();
        lock(s);
        if (s.broken.load() != 0) {
            s.mutex.unlock();
            throw_broken();
        }
        const std::uint32_t index = s.count;
        const std::uint32_t round = s.round.load();
        const std::uint32_t resets = s.resets.load();
        // Our round failed if the barrier is broken or was reset while we waited.
        auto failed = [&] { return s.broken.load(std::memory_order_acquire) != 0 || s.resets.load() != resets; };
        s.waiting[index] = Party{::getpid(), detail::process_start_time(::getpid())};
        if (++s.count == s.parties) {
            s.count = 0;
            s.round.fetch_add(1, std::memory_order_release);
            detail::futex_wake(s.round, INT_MAX, true);
            s.mutex.unlock();
            return index;
        }
        s.mutex.unlock();
        for (;;) {
            // Wake now and then to check that the parties waiting with us are alive.
            detail::Deadline step = detail::MonotonicClock::now() + kLivenessPeriod;
            if (deadline && *deadline < *step) step = deadline;
            detail::futex_wait(s.round, round, step, true);
            if (s.round.load(std::memory_order_acquire) != round) {
                if (failed()) throw_broken();
                return index;
            }
            lock(s);
            if (s.round.load() != round) {  // the round ended while we took the lock
                const bool broken = failed();
                s.mutex.unlock();
                if (broken) throw_broken();
                return index;
            }
            bool dead = false;
            for (std::uint32_t i = 0; i < s.count && !dead; ++i) {
                dead = detail::process_start_time(s.waiting[i].pid) != s.waiting[i].start_time;
            }
            const bool late = deadline && detail::MonotonicClock::now() >= *deadline;
            if (dead || late) {
                break_locked(s);
                s.count = 0;
                s.mutex.unlock();
                throw_broken();
            }
            s.mutex.unlock();
        }
    }
};

}  // namespace procpool
