// What procpool's internals do when allocations fail: the paths that run because something threw std::bad_alloc
// must not need memory themselves, or a result is lost and a caller waits for ever.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "failing_allocations.hpp"
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
