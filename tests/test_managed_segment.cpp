// The Boost.Interprocess mutex interface of Lock and RLock (boost::interprocess::scoped_lock with its try and timed
// forms).
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

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

pt::ptime in(std::chrono::milliseconds ms) {
    return pt::microsec_clock::universal_time() + pt::milliseconds(ms.count());
}

}  // namespace

TEST_CASE("Lock and RLock meet Boost.Interprocess' mutex interface: scoped_lock, try, timed") {
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
