// ManagedSegment (managed_segment.hpp) and the Boost.Interprocess mutex interface of Lock and RLock: Boost's
// containers shared zero-copy with workers, and a segment whose lock holder died is broken (BrokenSegmentError)
// instead of read corrupt.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <boost/interprocess/containers/map.hpp>
#include <boost/interprocess/containers/string.hpp>
#include <boost/interprocess/containers/vector.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <ranges>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
namespace bip = boost::interprocess;
namespace pt = boost::posix_time;

namespace {

using Ints = bip::vector<int, procpool::ManagedSegment::allocator<int>>;
using String = bip::basic_string<char, std::char_traits<char>, procpool::ManagedSegment::allocator<char>>;
using Names = bip::map<int, String, std::less<int>, procpool::ManagedSegment::allocator<std::pair<const int, String>>>;

pt::ptime in(std::chrono::milliseconds ms) {
    return pt::microsec_clock::universal_time() + pt::milliseconds(ms.count());
}

/// True when `use()` throws BrokenSegmentError.
template <class Use>
bool refused(Use use) {
    try {
        use();
        return false;
    } catch (const procpool::BrokenSegmentError&) {
        return true;
    }
}

}  // namespace

TEST_CASE("Boost.Interprocess containers in a ManagedSegment made before or after the pool, zero-copy",
          "[managed_segment]") {
    const procpool::ManagedSegment before(4 << 20);
    procpool::Pool pool(2);
    const procpool::ManagedSegment after(4 << 20);
    procpool::Lock lock;
    for (const procpool::ManagedSegment& segment : {before, after}) {
        Ints* ints = segment.find_or_construct<Ints>("ints")(segment.get_allocator<int>());
        Names* names = segment.construct<Names>("names")(std::less<int>(), segment.get_allocator<Names::value_type>());
        pool.map(
            [segment, lock](int i) mutable {
                bip::scoped_lock<procpool::Lock> guard(lock);  // the containers are yours to lock
                segment.find<Ints>("ints").first->push_back(i);
                Names& n = *segment.find<Names>("names").first;
                n.emplace(i, String(std::to_string(i).c_str(), segment.get_allocator<char>()));
            },
            std::views::iota(0, 1000));
        CHECK(ints->size() == 1000);
        CHECK(std::accumulate(ints->begin(), ints->end(), 0L) == 999L * 1000 / 2);
        CHECK(names->size() == 1000);
        CHECK(names->at(123) == "123");
        // The same object at the same address in the workers: nothing is copied.
        CHECK(pool.apply([segment] { return reinterpret_cast<std::uintptr_t>(segment.find<Ints>("ints").first); }) ==
              reinterpret_cast<std::uintptr_t>(ints));
        CHECK(segment.check_sanity());
        CHECK_FALSE(segment.broken());
    }
}

TEST_CASE("ManagedSegment: named objects, raw memory, sizes", "[managed_segment]") {
    const procpool::ManagedSegment segment(1 << 20);
    CHECK(segment.get_size() == (1u << 20));
    const std::size_t free_at_start = segment.get_free_memory();
    CHECK(free_at_start > (1u << 19));
    int* answer = segment.construct<int>("answer")(42);
    CHECK(*answer == 42);
    CHECK_THROWS_AS(segment.construct<int>("answer")(0), bip::interprocess_exception);  // the name is taken
    CHECK(segment.find_or_construct<int>("answer")(0) == answer);
    const auto array = segment.construct<double>("array")[10](0.5);
    CHECK(segment.find<double>("array") == std::pair<double*, std::size_t>{array, 10});
    CHECK(segment.find<int>("missing") == std::pair<int*, std::size_t>{nullptr, 0});
    CHECK(segment.destroy<int>("answer"));
    CHECK_FALSE(segment.destroy<int>("answer"));
    void* raw = segment.allocate(1000);
    CHECK(segment.get_free_memory() < free_at_start);
    segment.deallocate(raw);
    CHECK_THROWS_AS(segment.allocate(2u << 20), bip::bad_alloc);  // larger than the segment
    CHECK(segment.get_segment_manager()->get_num_named_objects() == 1);
    CHECK(segment.check_sanity());
    CHECK_THROWS_AS(procpool::ManagedSegment(16), std::invalid_argument);
    const procpool::ManagedSegment copy = segment;  // a handle: the same segment
    CHECK(copy == segment);
    CHECK(copy.find<double>("array").first == array);
}

TEST_CASE("Lock and RLock meet Boost.Interprocess' mutex interface: scoped_lock, try, timed", "[managed_segment]") {
    procpool::Lock lock;
    {
        bip::scoped_lock<procpool::Lock> guard(lock);
        CHECK(guard.owns());
        CHECK(lock.held());
    }
    CHECK_FALSE(lock.held());
    const procpool::Lock& constant = lock;  // timed_lock is a const member, like every member of a handle
    REQUIRE(constant.timed_lock(in(10ms)));
    CHECK(lock.held());
    lock.unlock();
    CHECK(constant.timed_lock(pt::ptime(pt::pos_infin)));
    lock.unlock();

    // Held by a worker: try and timed forms give up; pos_infin waits until it is released.
    procpool::Pool pool(1);
    procpool::Event holding;
    auto holder = pool.apply_async([lock, holding]() mutable {
        bip::scoped_lock<procpool::Lock> guard(lock);
        holding.set();
        std::this_thread::sleep_for(300ms);
    });
    REQUIRE(holding.wait(10s));
    {
        bip::scoped_lock<procpool::Lock> guard(lock, bip::try_to_lock);
        CHECK_FALSE(guard.owns());
    }
    const auto start = std::chrono::steady_clock::now();
    {
        bip::scoped_lock<procpool::Lock> guard(lock, in(50ms));
        CHECK_FALSE(guard.owns());
    }
    CHECK(std::chrono::steady_clock::now() - start >= 45ms);
    CHECK_FALSE(lock.timed_lock(pt::ptime(pt::neg_infin)));  // already passed: only a try
    {
        bip::scoped_lock<procpool::Lock> guard(lock, pt::ptime(pt::pos_infin));
        CHECK(guard.owns());
    }
    holder.get();

    procpool::RLock rlock;
    {
        bip::scoped_lock<procpool::RLock> outer(rlock);
        bip::scoped_lock<procpool::RLock> inner(rlock, in(10ms));
        CHECK(inner.owns());
    }
    CHECK_FALSE(rlock.held());
}

TEST_CASE("a process that died holding a segment's lock breaks it: every later use throws BrokenSegmentError",
          "[managed_segment]") {
    const procpool::ManagedSegment segment(1 << 20);
    Ints* ints = segment.construct<Ints>("ints")(segment.get_allocator<int>());
    ints->push_back(1);
    const pid_t child = ::fork();
    if (child == 0) {
        auto die = [] { ::kill(::getpid(), SIGKILL); };  // inside the name index's lock
        segment.get_segment_manager()->atomic_func(die);
        ::_exit(0);
    }
    REQUIRE(::waitpid(child, nullptr, 0) == child);
    CHECK_FALSE(segment.broken());  // not known until someone takes the lock
    CHECK(refused([&] { (void)segment.find<Ints>("ints"); }));
    CHECK(segment.broken());
    CHECK(refused([&] { (void)segment.allocate(8); }));
    CHECK(refused([&] { (void)segment.construct<int>("new")(1); }));
    CHECK(refused([&] { (void)segment.get_segment_manager(); }));
    CHECK(refused([&] { (void)segment.check_sanity(); }));
    CHECK(refused([&] { (void)segment.get_free_memory(); }));
    // The segment's own locks refuse too: a container growing there cannot reach the allocator.
    CHECK(refused([&] {
        for (int i = 0; i < 1000; ++i) ints->push_back(i);
    }));
    // And in a worker.
    procpool::Pool pool(1);
    CHECK(pool.apply([segment] { return refused([&] { (void)segment.find<Ints>("ints"); }); }));
    CHECK(pool.apply([segment] { return segment.broken(); }));
}

TEST_CASE("processes killed at random while allocating: each time the segment is whole or broken, never corrupt",
          "[managed_segment]") {
    std::mt19937 rng(187);
    int broken = 0;
    int whole = 0;
    for (int round = 0; round < 24; ++round) {
        // A fresh segment each round: the children die holding what they allocated.
        const auto segment = std::make_unique<const procpool::ManagedSegment>(1 << 20);
        std::vector<pid_t> children;
        for (int k = 0; k < 3; ++k) {
            const pid_t pid = ::fork();
            if (pid == 0) {
                const procpool::ManagedSegment& s = *segment;
                std::mt19937 local(static_cast<unsigned>(k * 1000 + round));
                std::vector<void*> held;
                for (long i = 0;; ++i) {
                    if (held.size() < 64 && (local() % 3 != 0 || held.empty())) {
                        held.push_back(s.allocate(16 + local() % 2000));
                    } else {
                        s.deallocate(held.back());
                        held.pop_back();
                    }
                    if (i % 16 == 0) {
                        const std::string name = "k" + std::to_string(k) + "-" + std::to_string(i % 8);
                        (void)s.find_or_construct<long>(name.c_str())(i);
                        (void)s.destroy<long>(name.c_str());
                    }
                }
            }
            children.push_back(pid);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(300 + rng() % 2000));
        for (pid_t pid : children) ::kill(pid, SIGKILL);
        for (pid_t pid : children) ::waitpid(pid, nullptr, 0);
        // Whole (every lock free or freed normally: Boost's own check passes and it allocates), or broken (a lock
        // was taken over) and refusing every use.
        bool sane = false;
        if (refused([&] { sane = segment->check_sanity(); })) {
            ++broken;
            CHECK(segment->broken());
            CHECK(refused([&] { (void)segment->allocate(16); }));
            CHECK(refused([&] { (void)segment->find<long>("k0-0"); }));
        } else {
            ++whole;
            CHECK(sane);
            void* p = segment->allocate(100);
            segment->deallocate(p);
            CHECK(segment->check_sanity());
        }
    }
    INFO(broken << " rounds broke the segment, " << whole << " left it whole");
    CHECK(broken > 0);  // killed inside the allocator at least once: the path under test was taken
    CHECK(broken + whole == 24);
}
