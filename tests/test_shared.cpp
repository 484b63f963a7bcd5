// Shared memory and synchronisation objects across real processes: exact counts under contention, wake-ups,
// lifetimes, and what happens when a process dies holding or waiting on each object.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <ranges>
#include <set>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

struct Sample {
    std::string name;
    std::vector<int> values;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(name, values);
    }
    bool operator==(const Sample&) const = default;
};

}  // namespace

// ---- SharedArray / SharedValue -------------------------------------------------------------------------------------

TEST_CASE("a SharedArray made before or after the pool is the same memory in the workers", "[shared]") {
    procpool::SharedArray<double> before(100);
    procpool::Pool pool(2);
    procpool::SharedArray<long> after(1000);
    // As an argument...
    pool.starmap([](procpool::SharedArray<double> a, int i) { a[static_cast<std::size_t>(i)] = i * 0.5; },
                 std::views::iota(0, 100) | std::views::transform([&](int i) {
                     return std::pair{before, i};
                 }));
    for (int i = 0; i < 100; ++i) CHECK(before[static_cast<std::size_t>(i)] == i * 0.5);
    // ... and captured.
    pool.map([after](int i) { after[static_cast<std::size_t>(i)] = 3L * i; }, std::views::iota(0, 1000));
    CHECK(std::accumulate(after.begin(), after.end(), 0L) == 3L * 999 * 1000 / 2);
    // Workers read what the parent wrote after the pool started.
    after[7] = -7;
    CHECK(pool.apply([after] { return after[7]; }) == -7);
}

TEST_CASE("SharedArray construction, access and bounds", "[shared]") {
    procpool::SharedArray<int> zeros(5);
    CHECK(zeros.size() == 5);
    CHECK(std::all_of(zeros.begin(), zeros.end(), [](int v) { return v == 0; }));
    procpool::SharedArray<int> listed{1, 2, 3};
    CHECK(listed.size() == 3);
    CHECK(listed[2] == 3);
    const std::vector<short> source{4, 5, 6, 7};
    const auto copied = procpool::SharedArray<short>::from_range(source);
    CHECK(std::equal(copied.begin(), copied.end(), source.begin(), source.end()));
    CHECK(copied.span().size() == 4);
    CHECK_THROWS_AS(listed.at(3), std::out_of_range);
    CHECK(listed.at(0) == 1);
    procpool::SharedArray<int> alias = listed;  // a handle: copies share
    alias[0] = 100;
    CHECK(listed[0] == 100);
    CHECK(alias == listed);
    procpool::SharedArray<int> empty(0);
    CHECK(empty.empty());
}

TEST_CASE("4 workers x 10 000 increments under a Lock give an exact count", "[shared]") {
    procpool::Pool pool(4);
    procpool::SharedValue<long> counter(0);
    procpool::Lock lock;
    pool.map(
        [counter, lock](int) mutable {
            for (int i = 0; i < 10000; ++i) {
                std::lock_guard guard(lock);
                ++counter.value();
            }
        },
        std::views::iota(0, 4), {.chunksize = 1});
    CHECK(counter.value() == 40000);
    // The same with the array's own lock, and std::scoped_lock / std::unique_lock.
    procpool::SharedArray<long> cells(1);
    pool.map(
        [cells](int) {
            for (int i = 0; i < 5000; ++i) {
                procpool::Lock l = cells.get_lock();
                std::unique_lock guard(l);
                ++cells[0];
            }
        },
        std::views::iota(0, 4), {.chunksize = 1});
    CHECK(cells[0] == 20000);
}

TEST_CASE("Lock: timed acquire, owner checks, Lockable", "[shared]") {
    procpool::Pool pool(1);
    procpool::Lock lock;
    lock.acquire();
    CHECK(lock.held());
    CHECK_FALSE(pool.apply([lock]() mutable { return lock.acquire(50ms); }));  // held by the parent
    CHECK(pool.apply([lock]() mutable { return lock.try_lock(); }) == false);
    CHECK_THROWS_AS(pool.apply([lock]() mutable { lock.release(); }), procpool::PoolStateError);
    CHECK_THROWS_AS(lock.acquire(), procpool::PoolStateError);  // not recursive
    lock.release();
    CHECK_FALSE(lock.held());
    CHECK_THROWS_AS(lock.release(), procpool::PoolStateError);
    CHECK(pool.apply([lock]() mutable {
        const bool got = lock.try_lock_for(1s);
        if (got) lock.unlock();
        return got;
    }));
    procpool::Lock a;
    procpool::Lock b;
    {
        std::scoped_lock both(a, b);
        CHECK(a.held());
        CHECK(b.held());
    }
    CHECK_FALSE(a.held());
}

TEST_CASE("get_lock() fits std::lock_guard, std::scoped_lock and std::unique_lock, in the parent and in tasks",
          "[shared]") {
    procpool::Pool pool(2);
    procpool::SharedValue<long> v(0);
    procpool::SharedArray<int> a(4);
    {
        std::lock_guard guard(v.get_lock());  // Python: with v.get_lock():
        CHECK(v.get_lock().held());
        CHECK_FALSE(pool.apply([v] { return v.get_lock().try_lock(); }));  // the same lock, in a worker
    }
    CHECK_FALSE(v.get_lock().held());
    {
        std::scoped_lock both(a.get_lock(), v.get_lock());
        CHECK(a.get_lock().held());
        CHECK(v.get_lock().held());
    }
    CHECK_FALSE(a.get_lock().held());
    {
        std::lock_guard<procpool::Lock> spelled_out(a.get_lock());
        std::unique_lock<procpool::Lock> deferred(v.get_lock(), std::defer_lock);
        CHECK(deferred.try_lock());
        CHECK(a.get_lock().held());
    }
    CHECK_FALSE(v.get_lock().held());
    // Copies of the handle return the same lock; in tasks, a lambda without `mutable` locks through it.
    const procpool::SharedValue<long> copy = v;
    {
        std::lock_guard guard(copy.get_lock());
        CHECK(v.get_lock().held());
    }
    pool.map(
        [v](int) {
            for (int i = 0; i < 5000; ++i) {
                std::lock_guard guard(v.get_lock());
                ++v.value();
            }
        },
        std::views::iota(0, 4), {.chunksize = 1});
    CHECK(v.value() == 20000);
}

TEST_CASE("shared objects are handles: a lambda capturing them by value needs no mutable", "[shared]") {
    procpool::Pool pool(2);
    procpool::Lock lock;
    procpool::RLock rlock;
    procpool::Semaphore semaphore(2);
    procpool::BoundedSemaphore bounded(1);
    procpool::Event event;
    procpool::Condition condition;
    procpool::Barrier barrier(1);
    procpool::Queue<int> queue;
    procpool::SharedValue<long> total(0);
    // Every member used here is const: the lambda's call operator is const, as for any lambda without `mutable`.
    const auto task = [lock, rlock, semaphore, bounded, event, condition, barrier, queue, total](int x) {
        {
            std::lock_guard guard(lock);
            total.value() += x;
        }
        {
            std::lock_guard outer(rlock);
            std::lock_guard inner(rlock);
        }
        semaphore.acquire();
        semaphore.release();
        bounded.acquire();
        bounded.release();
        {
            std::lock_guard guard(condition);
            condition.notify_all();
        }
        (void)barrier.wait();
        queue.put(x);
        event.set();
        return x;
    };
    const std::vector<int> out = pool.map(task, std::views::iota(1, 101));
    CHECK(out.size() == 100);
    CHECK(total.value() == 5050);
    CHECK(queue.size() == 100);
    CHECK(event.is_set());
    long drained = 0;
    while (std::optional<int> x = queue.try_get()) drained += *x;
    CHECK(drained == 5050);
}

TEST_CASE("try_lock and a timed acquire of a Lock this thread holds return false, as lock.acquire(False)", "[shared]") {
    procpool::Pool pool(1);
    procpool::Lock lock;
    lock.acquire();
    CHECK_FALSE(lock.try_lock());
    CHECK_FALSE(lock.acquire(20ms));
    CHECK_FALSE(lock.try_lock_for(1ms));
    CHECK_THROWS_AS(lock.acquire(), procpool::PoolStateError);  // blocking: a deadlock in Python, an error here
    CHECK(lock.held());                                         // still held once, by this thread
    lock.release();
    CHECK_FALSE(lock.held());
    CHECK(lock.try_lock());
    lock.unlock();
    // The same in a worker, on the worker's own hold.
    CHECK(pool.apply([lock] {
        lock.acquire();
        const bool again = lock.try_lock() || lock.acquire(10ms);
        lock.release();
        return !again && !lock.held();
    }));
    // An RLock's holder gets it again.
    procpool::RLock rlock;
    rlock.acquire();
    CHECK(rlock.try_lock());
    CHECK(rlock.acquire(1ms));
    rlock.release();
    rlock.release();
    rlock.release();
    CHECK_FALSE(rlock.held());
}

TEST_CASE("RLock can be taken again by its holder", "[shared]") {
    procpool::Pool pool(1);
    procpool::RLock lock;
    CHECK(pool.apply([lock]() mutable {
        lock.acquire();
        lock.acquire();
        const bool twice = lock.held();
        lock.release();
        const bool still = lock.held();
        lock.release();
        return twice && still && !lock.held();
    }));
    lock.acquire();
    lock.acquire();
    lock.release();
    lock.release();
    CHECK_THROWS_AS(lock.release(), procpool::PoolStateError);
}

// ---- Semaphore ----------------------------------------------------------------------------------------------------

TEST_CASE("a Semaphore bounds the number of concurrent holders", "[shared]") {
    procpool::Pool pool(4);
    procpool::Semaphore slots(2);
    procpool::SharedArray<int> state(2);  // [holders now, most holders seen]
    pool.map(
        [slots, state](int) mutable {
            for (int round = 0; round < 20; ++round) {
                slots.acquire();
                const int now = std::atomic_ref<int>(state[0]).fetch_add(1) + 1;
                int seen = std::atomic_ref<int>(state[1]).load();
                while (now > seen && !std::atomic_ref<int>(state[1]).compare_exchange_weak(seen, now)) {
                }
                std::this_thread::sleep_for(200us);
                std::atomic_ref<int>(state[0]).fetch_sub(1);
                slots.release();
            }
        },
        std::views::iota(0, 4), {.chunksize = 1});
    CHECK(state[1] == 2);
    CHECK(state[0] == 0);
    CHECK(slots.value() == 2);
}

TEST_CASE("Semaphore timed acquire, and BoundedSemaphore refuses to be over-released", "[shared]") {
    procpool::Pool pool(1);
    procpool::Semaphore none(0);
    CHECK_FALSE(pool.apply([none]() mutable { return none.acquire(30ms); }));
    auto waiter = pool.apply_async([none]() mutable { return none.acquire(10s); });
    std::this_thread::sleep_for(50ms);
    none.release();
    CHECK(waiter.get());
    procpool::BoundedSemaphore bounded(1);
    CHECK_THROWS_AS(bounded.release(), procpool::PoolStateError);
    bounded.acquire();
    bounded.release();
    CHECK_THROWS_AS(pool.apply([bounded]() mutable { bounded.release(); }), procpool::PoolStateError);
    procpool::Semaphore plain(1);
    plain.release();  // an unbounded semaphore may go above its start
    CHECK(plain.value() == 2);
}

// ---- Event / Condition --------------------------------------------------------------------------------------------

TEST_CASE("an Event wakes every waiting process", "[shared]") {
    procpool::Pool pool(3);
    procpool::Event go;
    CHECK_FALSE(go.is_set());
    std::vector<procpool::AsyncResult<bool>> waiters;
    for (int i = 0; i < 3; ++i) waiters.push_back(pool.apply_async([go]() mutable { return go.wait(10s); }));
    std::this_thread::sleep_for(100ms);
    for (auto& w : waiters) CHECK_FALSE(w.ready());
    go.set();
    for (auto& w : waiters) CHECK(w.get(5s));
    CHECK(go.is_set());
    go.clear();
    CHECK_FALSE(pool.apply([go]() mutable { return go.wait(20ms); }));
}

TEST_CASE("Condition: consumers wait for a value a producer notifies", "[shared]") {
    procpool::Pool pool(3);
    procpool::Condition condition;
    procpool::SharedValue<int> ready(0);
    std::vector<procpool::AsyncResult<int>> consumers;
    for (int i = 0; i < 2; ++i) {
        consumers.push_back(pool.apply_async([condition, ready]() mutable {
            std::unique_lock guard(condition);
            if (!condition.wait_for([&] { return ready.value() != 0; }, 10s)) return -1;
            return ready.value();
        }));
    }
    std::this_thread::sleep_for(100ms);
    {
        std::lock_guard guard(condition);
        ready.value() = 42;
        condition.notify_all();
    }
    for (auto& c : consumers) CHECK(c.get(5s) == 42);
    // notify(1) wakes one; wait() without the lock is an error; a timed wait times out.
    CHECK_THROWS_AS(condition.wait(), procpool::PoolStateError);
    condition.acquire();
    CHECK_FALSE(condition.wait(20ms));
    condition.release();
}

// ---- Barrier ------------------------------------------------------------------------------------------------------

TEST_CASE("a Barrier releases its parties together, round after round, with distinct indices", "[shared]") {
    procpool::Pool pool(3);
    procpool::Barrier barrier(3);
    procpool::SharedArray<int> arrivals(10);
    const std::vector<std::vector<std::size_t>> indices = pool.map(
        [barrier, arrivals](int) mutable {
            std::vector<std::size_t> mine;
            for (int round = 0; round < 10; ++round) {
                std::atomic_ref<int>(arrivals[static_cast<std::size_t>(round)]).fetch_add(1);
                mine.push_back(barrier.wait(10s));
                // Everyone arrived before anyone passed.
                if (std::atomic_ref<int>(arrivals[static_cast<std::size_t>(round)]).load() != 3) mine.push_back(999);
            }
            return mine;
        },
        std::views::iota(0, 3), {.chunksize = 1});
    for (int round = 0; round < 10; ++round) {
        std::set<std::size_t> distinct;
        for (const auto& mine : indices) distinct.insert(mine[static_cast<std::size_t>(round)]);
        CHECK(distinct == std::set<std::size_t>{0, 1, 2});
    }
    for (const auto& mine : indices) CHECK(mine.size() == 10);
}

TEST_CASE("a Barrier whose party died while waiting is broken and says so", "[shared]") {
    procpool::Barrier barrier(3);
    const pid_t party = ::fork();
    if (party == 0) {
        barrier.wait();
        ::_exit(0);
    }
    procpool::Pool pool(1);
    auto survivor = pool.apply_async([barrier]() mutable {
        try {
            barrier.wait(30s);
            return 0;
        } catch (const procpool::BrokenBarrierError&) {
            return 1;
        }
    });
    REQUIRE(test_support::eventually([&] { return barrier.n_waiting() == 2; }));
    ::kill(party, SIGKILL);
    ::waitpid(party, nullptr, 0);
    const auto killed = std::chrono::steady_clock::now();
    CHECK(survivor.get(10s) == 1);
    CHECK(std::chrono::steady_clock::now() - killed < 2s);
    CHECK(barrier.broken());
    CHECK_THROWS_AS(barrier.wait(), procpool::BrokenBarrierError);
    barrier.reset();
    CHECK_FALSE(barrier.broken());
    CHECK(barrier.n_waiting() == 0);
}

TEST_CASE("Barrier: a timed wait breaks the barrier, abort() breaks it, reset() mends it", "[shared]") {
    procpool::Barrier barrier(2);
    CHECK_THROWS_AS(barrier.wait(30ms), procpool::BrokenBarrierError);
    CHECK(barrier.broken());
    barrier.reset();
    procpool::Pool pool(1);
    auto waiter = pool.apply_async([barrier]() mutable {
        try {
            barrier.wait(10s);
            return false;
        } catch (const procpool::BrokenBarrierError&) {
            return true;
        }
    });
    REQUIRE(test_support::eventually([&] { return barrier.n_waiting() == 1; }));
    barrier.abort();
    CHECK(waiter.get(5s));
    CHECK_THROWS_AS(procpool::Barrier(0), std::invalid_argument);
}

// ---- Queue --------------------------------------------------------------------------------------------------------

TEST_CASE("Queue: producers and consumers in several processes, every item once, checksums match", "[shared]") {
    procpool::Pool pool(4);
    procpool::Queue<std::pair<int, std::string>> queue;
    constexpr int kPerProducer = 2000;
    auto producers = pool.map_async(
        [queue](int p) mutable {
            for (int i = 0; i < kPerProducer; ++i)
                queue.put({p * kPerProducer + i, std::to_string(p * kPerProducer + i)});
        },
        std::views::iota(0, 2), {.chunksize = 1});
    auto consumers = pool.map_async(
        [queue](int) mutable {
            long sum = 0;
            for (int i = 0; i < kPerProducer; ++i) {
                const auto item = queue.get(10s);
                if (!item || std::to_string(item->first) != item->second) return -1L;
                sum += item->first;
            }
            return sum;
        },
        std::views::iota(0, 2), {.chunksize = 1});
    producers.get();
    const std::vector<long> sums = consumers.get(30s);
    const long total = std::accumulate(sums.begin(), sums.end(), 0L);
    CHECK(std::find(sums.begin(), sums.end(), -1L) == sums.end());
    CHECK(total == static_cast<long>(2 * kPerProducer) * (2 * kPerProducer - 1) / 2);
    CHECK(queue.empty());
}

TEST_CASE("Queue: any serializable type, FIFO order, try_get, timed get, size", "[shared]") {
    procpool::Queue<Sample> queue;
    CHECK(queue.empty());
    CHECK_FALSE(queue.try_get());
    CHECK_FALSE(queue.get(20ms));
    procpool::Pool pool(1);
    pool.apply([queue]() mutable {
        for (int i = 0; i < 5; ++i)
            queue.put(Sample{"s" + std::to_string(i), std::vector<int>(static_cast<std::size_t>(i), i)});
    });
    CHECK(queue.size() == 5);
    for (int i = 0; i < 5; ++i) {
        const auto s = queue.try_get();
        REQUIRE(s);
        CHECK(s->name == "s" + std::to_string(i));
        CHECK(s->values == std::vector<int>(static_cast<std::size_t>(i), i));
    }
    // Large items.
    procpool::Queue<std::string> big;
    big.put(std::string(8u << 20, 'x'));
    CHECK(pool.apply([big]() mutable { return big.get().size(); }) == (8u << 20));
}

TEST_CASE("a bounded Queue makes put() wait while it is full", "[shared]") {
    procpool::Queue<int> queue(2);
    CHECK(queue.try_put(1));
    CHECK(queue.try_put(2));
    CHECK_FALSE(queue.try_put(3));
    CHECK_FALSE(queue.put(3, 20ms));
    procpool::Pool pool(1);
    auto producer = pool.apply_async([queue]() mutable {
        queue.put(3);  // waits until the parent takes one
        return true;
    });
    std::this_thread::sleep_for(100ms);
    CHECK_FALSE(producer.ready());
    CHECK(queue.get() == 1);
    CHECK(producer.get(5s));
    CHECK(queue.get() == 2);
    CHECK(queue.get() == 3);
    CHECK(queue.maxsize() == 2);
}

// ---- threads of one process ---------------------------------------------------------------------------------------

TEST_CASE("threads of one process share a Lock, a SharedValue, a SharedArray and a Queue", "[shared][threads]") {
    procpool::SharedValue<long> counter(0);
    procpool::SharedArray<long> cells(4);
    procpool::Lock lock;
    procpool::Queue<int> queue;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        // Each thread gets its own copies of the handles (their reference counts are shared).
        threads.emplace_back([counter, cells, lock, queue, t]() mutable {
            for (int i = 0; i < 2000; ++i) {
                std::lock_guard guard(lock);
                ++counter.value();
            }
            cells[static_cast<std::size_t>(t)] = t + 1;  // one writer per cell
            for (int i = 0; i < 100; ++i) queue.put(t * 100 + i);
        });
    }
    long sum = 0;
    for (int i = 0; i < 400; ++i) {
        const auto item = queue.get(10s);
        REQUIRE(item);
        sum += *item;
    }
    for (auto& thread : threads) thread.join();
    CHECK(counter.value() == 8000);
    CHECK(std::accumulate(cells.begin(), cells.end(), 0L) == 1 + 2 + 3 + 4);
    CHECK(sum == 399L * 400 / 2);
    CHECK(queue.empty());
}

// ---- deaths -------------------------------------------------------------------------------------------------------

TEST_CASE("a process killed while holding a lock: the next acquirer gets it and is told", "[shared]") {
    procpool::Lock lock;
    procpool::RLock rlock;
    procpool::Condition condition;
    procpool::SharedArray<int> array(4);
    procpool::Event held;
    const pid_t holder = ::fork();
    if (holder == 0) {
        lock.acquire();
        rlock.acquire();
        rlock.acquire();
        condition.acquire();
        array.get_lock().acquire();
        held.set();
        for (;;) ::pause();
    }
    REQUIRE(held.wait(10s));
    ::kill(holder, SIGKILL);
    ::waitpid(holder, nullptr, 0);
    // In a worker of a pool and in this process: each lock is taken over, and the taker is told.
    procpool::Pool pool(1);
    CHECK(pool.apply([lock]() mutable {
        if (!lock.acquire(5s)) return false;
        const bool told = lock.owner_died();
        lock.release();
        return told;
    }));
    lock.acquire();
    CHECK_FALSE(lock.owner_died());  // the takeover is over: this time nobody died
    lock.release();
    REQUIRE(rlock.acquire(5s));
    CHECK(rlock.owner_died());
    rlock.release();
    CHECK_FALSE(rlock.held());  // the dead holder's two levels did not carry over
    REQUIRE(condition.acquire(5s));
    CHECK(condition.owner_died());
    condition.release();
    procpool::Lock array_lock = array.get_lock();
    REQUIRE(array_lock.acquire(5s));
    CHECK(array_lock.owner_died());
    array_lock.release();
}

TEST_CASE("processes killed while waiting on each object do not block the others", "[shared]") {
    procpool::Semaphore semaphore(0);
    procpool::Event event;
    procpool::Condition condition;
    procpool::Queue<int> empty_queue;
    procpool::Queue<int> full_queue(1);
    full_queue.put(0);
    // Children that wait on every object, killed while they wait.
    std::vector<pid_t> children;
    for (int kind = 0; kind < 5; ++kind) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            switch (kind) {
                case 0: semaphore.acquire(); break;
                case 1: event.wait(); break;
                case 2:
                    condition.acquire();
                    condition.wait();
                    break;
                case 3: (void)empty_queue.get(); break;
                case 4: full_queue.put(1); break;
                default: break;
            }
            ::_exit(0);
        }
        children.push_back(pid);
    }
    std::this_thread::sleep_for(200ms);
    for (pid_t pid : children) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }
    // Everything still works for the living.
    procpool::Pool pool(2);
    auto sem_waiter = pool.apply_async([semaphore]() mutable { return semaphore.acquire(10s); });
    semaphore.release();
    CHECK(sem_waiter.get(5s));
    auto event_waiter = pool.apply_async([event]() mutable { return event.wait(10s); });
    event.set();
    CHECK(event_waiter.get(5s));
    auto cond_waiter = pool.apply_async([condition]() mutable {
        std::unique_lock guard(condition);
        return condition.wait(10s);
    });
    std::this_thread::sleep_for(50ms);
    {
        std::lock_guard guard(condition);
        condition.notify_all();
    }
    CHECK(cond_waiter.get(5s));
    auto getter = pool.apply_async([empty_queue]() mutable { return empty_queue.get(10s); });
    empty_queue.put(5);
    CHECK(getter.get(5s) == std::optional<int>(5));
    CHECK(full_queue.get() == 0);
    CHECK(full_queue.try_put(2));
}

TEST_CASE("processes killed at random inside Queue put/get leave it consistent and usable", "[shared]") {
    procpool::Queue<std::string> queue;
    procpool::SharedValue<long> taken(0);  // items consumers took (they die with some in hand)
    std::mt19937 rng(5);
    long put_attempts = 0;
    for (int round = 0; round < 40; ++round) {
        std::vector<pid_t> children;
        for (int k = 0; k < 3; ++k) {
            const pid_t pid = ::fork();
            if (pid == 0) {
                for (long i = 0;; ++i) {
                    if (k == 0) {
                        (void)queue.get(1s);
                        std::atomic_ref<long>(taken.value()).fetch_add(1);
                    } else {
                        queue.put(std::string(static_cast<std::size_t>(i % 300), 'q'));
                    }
                }
            }
            children.push_back(pid);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 3000));
        for (pid_t pid : children) ::kill(pid, SIGKILL);  // anywhere: inside a critical section too
        for (pid_t pid : children) ::waitpid(pid, nullptr, 0);
        ++put_attempts;
    }
    // Whatever is left is whole: size() matches what get() returns, and every item is a valid string.
    const std::size_t size = queue.size();
    std::size_t drained = 0;
    while (auto item = queue.try_get()) {
        CHECK(item->find_first_not_of('q') == std::string::npos);
        ++drained;
    }
    CHECK(drained == size);
    queue.put("after");
    CHECK(queue.get(1s) == std::optional<std::string>("after"));
    CHECK(put_attempts == 40);
}

// ---- lifetime -----------------------------------------------------------------------------------------------------

TEST_CASE("an object a queued task refers to stays alive until the task ran, then is freed", "[shared]") {
    procpool::Pool pool(1);
    auto blocker = pool.apply_async([] { std::this_thread::sleep_for(200ms); });
    // The only handle is in a temporary lambda and in the argument: both are gone when apply_async returns.
    auto captured = pool.apply_async([a = procpool::SharedArray<int>(64)] {
        a[5] = 7;
        return a[5] + static_cast<int>(a.size());
    });
    auto argument = pool.apply_async([](procpool::SharedArray<int> a) { return static_cast<int>(a.size()); },
                                     procpool::SharedArray<int>(32));
    CHECK(captured.get(5s) == 71);
    CHECK(argument.get(5s) == 32);
    blocker.get();
}

namespace {
/// True when copying `source` writes every byte of the copy: the copy made over memory filled with zeros and the one
/// made over memory filled with ones are equal byte for byte (a padding byte keeps what was there).
template <class Handle>
bool copy_writes_every_byte(const Handle& source) {
    alignas(Handle) std::array<std::byte, sizeof(Handle)> zeros;
    alignas(Handle) std::array<std::byte, sizeof(Handle)> ones;
    zeros.fill(std::byte{0x00});
    ones.fill(std::byte{0xff});
    // The fills must happen: a compiler may drop stores into memory whose object's lifetime begins right after.
    asm volatile("" : : "r"(zeros.data()), "r"(ones.data()) : "memory");
    auto* a = ::new (zeros.data()) Handle(source);
    auto* b = ::new (ones.data()) Handle(source);
    const bool same = zeros == ones;
    std::destroy_at(a);
    std::destroy_at(b);
    return same;
}
}  // namespace

// A lambda that captures a handle is copied to the worker byte for byte, and the stack check reads each of its 8-byte
// words for an address in the caller's stack. A padding byte holds whatever the stack held there: half of a stale
// stack address beside a handle's small kind field once made the test above fail with "the callable refers to this
// thread's stack".
TEST_CASE("a shared-object handle has no padding: a callable capturing one is never taken for a stack reference",
          "[shared]") {
    CHECK(copy_writes_every_byte(procpool::SharedArray<int>(4)));
    CHECK(copy_writes_every_byte(procpool::Queue<int>(4)));
    CHECK(copy_writes_every_byte(procpool::Lock()));
    CHECK(copy_writes_every_byte(procpool::RLock()));
    CHECK(copy_writes_every_byte(procpool::Semaphore(1)));
    CHECK(copy_writes_every_byte(procpool::Event()));
    CHECK(copy_writes_every_byte(procpool::Condition()));
    CHECK(copy_writes_every_byte(procpool::Barrier(2)));
    CHECK(copy_writes_every_byte(procpool::SharedDict<int, int>()));
    CHECK(copy_writes_every_byte(procpool::SharedList<int>()));
    CHECK(copy_writes_every_byte(procpool::make_pipe<int>().first));
}

TEST_CASE("a handle to an object freed by its owner is detected, not followed", "[shared]") {
    procpool::Pool pool(1);
    // A worker makes an array and returns a handle to it: the worker owned it, and freed it when the task ended.
    CHECK_THROWS_AS(pool.apply([] { return procpool::SharedArray<int>(10); }), procpool::SerializationError);
    // A handle coming back to its owner owns the object again.
    procpool::SharedArray<int> mine(3);
    procpool::SharedArray<int> back = pool.apply(
        [](procpool::SharedArray<int> a) {
            a[1] = 9;
            return a;
        },
        mine);
    CHECK(back == mine);
    CHECK(back[1] == 9);
    // Also when the argument was the only handle (a temporary, gone before the task ran): the task keeps it
    // alive until its result, a handle to it, is in.
    auto pending = pool.apply_async(
        [](procpool::SharedArray<int> a) {
            a[2] = 7;
            return a;
        },
        procpool::SharedArray<int>(3));
    procpool::SharedArray<int> only = pending.get();
    CHECK(only[2] == 7);
}

TEST_CASE("nothing is left in /dev/shm by shared objects, pools or dead processes", "[shared]") {
    const std::set<std::string> before = test_support::dev_shm_entries();
    {
        procpool::Pool pool(2);
        procpool::SharedArray<int> array(1000);
        procpool::Queue<std::string> queue;
        procpool::Lock lock;
        procpool::Barrier barrier(2);
        pool.map(
            [array, queue](int i) mutable {
                array[static_cast<std::size_t>(i)] = i;
                queue.put(std::to_string(i));
            },
            std::views::iota(0, 100));
        ::kill(pool.worker_pids().front(), SIGKILL);
        CHECK(pool.apply([array] { return array[99]; }) == 99);
    }
    CHECK(test_support::dev_shm_entries() == before);
}
