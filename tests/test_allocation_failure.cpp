// What procpool's internals do when allocations fail: the paths that run because something threw std::bad_alloc
// must not need memory themselves, or a result is lost and a caller waits for ever.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "failing_allocations.hpp"
#include "fake_transport.hpp"
#include "support.hpp"

using procpool_test::FailingAllocations;
using test_support::message_of;

namespace {

using Job = procpool::detail::ImapJob<int>;

Job make_job(bool ordered) {
    return Job([](procpool::detail::TaskRunner&) {}, procpool::detail::Buffer(), 1, ordered);
}

/// Delivers item `index` of `job`, whose value is its index.
void deliver_value(Job& job, int index) {
    std::array<std::byte, sizeof index> encoded{};
    std::memcpy(encoded.data(), &index, sizeof index);
    procpool::InputArchive values(encoded);
    job.deliver(static_cast<std::uint64_t>(index), 1, {}, values, 0);
}

/// The message of the next entry the reader can take ("value <v>" for a value), or "(none)".
std::string take_one(Job& job) {
    std::optional<Job::Entry> entry = job.try_take();
    if (!entry) return "(none)";
    return entry->value ? "value " + std::to_string(*entry->value) : message_of(entry->error);
}

/// The messages of every entry the reader can take now.
std::vector<std::string> take_all(Job& job) {
    std::vector<std::string> messages;
    for (std::string message = take_one(job); message != "(none)"; message = take_one(job)) messages.push_back(message);
    return messages;
}

}  // namespace

TEST_CASE("imap: failing items allocates nothing, so a std::bad_alloc cannot lose them", "[allocation_failure]") {
    // The scheduler fails a message's items when delivering them threw, std::bad_alloc included: if failing them
    // needed memory too, they would never resolve and the reader would wait for ever.
    for (const bool ordered : {true, false}) {
        CAPTURE(ordered);
        Job job = make_job(ordered);
        job.expect(0, 3);
        job.expect(3, 2);
        job.expect(5, 1);
        const auto crashed = std::make_exception_ptr(std::runtime_error("crashed"));
        const auto timed_out = std::make_exception_ptr(std::runtime_error("timed out"));
        bool threw = false;
        {
            const FailingAllocations failing;
            try {
                job.fail(3, 2, crashed);
                job.fail(0, 3, timed_out);
                job.fail(5, 1, crashed);
            } catch (...) {
                threw = true;
            }
        }
        CHECK_FALSE(threw);
        const std::vector<std::string> expected =
            ordered ? std::vector<std::string>{"timed out", "timed out", "timed out", "crashed", "crashed", "crashed"}
                    : std::vector<std::string>{"crashed", "crashed", "timed out", "timed out", "timed out", "crashed"};
        CHECK(take_all(job) == expected);
        CHECK(job.unconsumed() == 0);
    }
}

TEST_CASE("imap unordered: failures stored without allocating keep their place in completion order",
          "[allocation_failure]") {
    // imap_unordered yields results in the order they complete, failures included. The failures are stored within the
    // room expect() made, for every item not taken yet.
    Job job = make_job(false);
    job.expect(0, 3);
    job.expect(3, 4);
    const auto crashed = std::make_exception_ptr(std::runtime_error("crashed"));
    const auto timed_out = std::make_exception_ptr(std::runtime_error("timed out"));
    std::vector<std::string> taken;
    deliver_value(job, 0);
    {
        const FailingAllocations failing;
        job.fail(3, 2, timed_out);  // after item 0's value
    }
    deliver_value(job, 2);
    taken.push_back(take_one(job));  // item 0: the reader now stands right before the failed run
    {
        const FailingAllocations failing;
        job.fail(1, 1, crashed);  // after item 2's value
    }
    deliver_value(job, 5);
    deliver_value(job, 6);
    for (std::string& message : take_all(job)) taken.push_back(std::move(message));
    CHECK(taken ==
          std::vector<std::string>{"value 0", "timed out", "timed out", "value 2", "crashed", "value 5", "value 6"});
    CHECK(job.unconsumed() == 0);
}

namespace {

/// The grouped fake (each slot a group of workers, so each task's message carries an item index the scheduler
/// allocates) whose write of the first task makes the caller's next allocation fail: the item index of the task
/// dispatched after it.
class FailingSecondTaskTransport : public test_support::GroupedFakeTransport {
public:
    using GroupedFakeTransport::GroupedFakeTransport;

    bool write(std::size_t slot, std::uint16_t kind, std::span<const procpool::detail::Piece> pieces, std::size_t total,
               std::size_t& written, std::uint64_t* first_position = nullptr) {
        const bool done = GroupedFakeTransport::write(slot, kind, pieces, total, written, first_position);
        if (kind == procpool::detail::kTaskMessage) {
            {
                std::lock_guard lock(task_writers_mutex_);
                task_writers_.push_back(std::this_thread::get_id());
            }
            if (!armed_once_) {
                armed_once_ = true;
                procpool_test::fail_next_allocations_here(1);
            }
        }
        return done;
    }
    /// The task messages `thread` wrote.
    [[nodiscard]] std::size_t tasks_written_by(std::thread::id thread) const {
        std::lock_guard lock(task_writers_mutex_);
        return static_cast<std::size_t>(std::count(task_writers_.begin(), task_writers_.end(), thread));
    }

private:
    bool armed_once_ = false;  // (the scheduler's lock guards every write)
    mutable std::mutex task_writers_mutex_;
    std::vector<std::thread::id> task_writers_;
};

struct FailingSecondTaskPool : procpool::BasicPool<FailingSecondTaskTransport> {
    using BasicPool::BasicPool;
    FailingSecondTaskPool(const FailingSecondTaskPool&) = delete;
    FailingSecondTaskPool& operator=(const FailingSecondTaskPool&) = delete;
    ~FailingSecondTaskPool() { terminate(); }  // the fake never runs the tasks
};

}  // namespace

TEST_CASE("a task whose message cannot be built is sent by the next dispatch, and the submission stands",
          "[allocation_failure]") {
    // A group of 4 workers and a group of 1, each kept two tasks deep per worker: map_async sends 6 tasks of 2 items
    // at once. Building the second one's item index fails; the job is queued all the same (the caller holds its
    // result), and the task goes out with the next dispatch (housekeeping, every 50 ms), the others after it.
    FailingSecondTaskPool pool(procpool::PoolOptions{.processes = 2});
    auto& fake = procpool::detail::PoolAccess::core(pool).transport;
    const std::vector<std::string> words(40, "word");
    std::optional<procpool::AsyncResult<std::vector<std::size_t>>> result;
    REQUIRE_NOTHROW(
        result.emplace(pool.map_async([](const std::string& w) { return w.size(); }, words, {.chunksize = 2})));
    // The first task; the second could not be built, so the caller's dispatch stopped there. (Counted by thread:
    // the service thread's housekeeping may already have sent the rest.)
    CHECK(fake.tasks_written_by(std::this_thread::get_id()) == 1);
    REQUIRE(test_support::eventually([&] { return fake.writes().size() == 6; }, std::chrono::seconds(5)));
    std::vector<std::uint64_t> tasks;
    for (const auto& write : fake.writes()) {
        CHECK(write.items == 2);
        tasks.push_back(write.task);
    }
    std::sort(tasks.begin(), tasks.end());
    CHECK(std::adjacent_find(tasks.begin(), tasks.end()) == tasks.end());  // each task written once
    CHECK(tasks == std::vector<std::uint64_t>{tasks.front(), tasks.front() + 1, tasks.front() + 2, tasks.front() + 3,
                                              tasks.front() + 4, tasks.front() + 5});  // none lost
}
