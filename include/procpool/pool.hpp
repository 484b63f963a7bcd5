// procpool: the process pool.
//
// BasicPool<Transport> holds the whole API; `Pool` is the single-machine pool (forked workers, shared-memory
// rings). The MPI pool (procpool/mpi.hpp) is the same template over another transport, so code written against
// a pool runs on either.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <iterator>
#include <memory>
#include <ranges>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/async_result.hpp"
#include "procpool/detail/checks.hpp"
#include "procpool/detail/fork_transport.hpp"
#include "procpool/detail/jobs.hpp"
#include "procpool/detail/pool_core.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/imap.hpp"
#include "procpool/options.hpp"
#include "procpool/serialize.hpp"

namespace procpool {

namespace detail {

template <class Range>
using range_item_t = decoded_t<std::ranges::range_value_t<Range>>;

/// Reaches a pool's parts (its transport and scheduler): for the MPI rank server, which submits the tasks it receives
/// to its pool's scheduler, and for procpool's own tests, which drive a fake transport.
struct PoolAccess {
    template <class Pool>
    static auto& core(Pool& pool) {
        return pool.core();
    }
};

}  // namespace detail

template <class Transport>
class BasicPool {
    using Core = detail::PoolCore<Transport>;

public:
    using transport_type = Transport;

    /// One worker per CPU this process may run on. Forks them before returning.
    BasicPool() : BasicPool(PoolOptions{}) {}
    /// `processes` workers; 0 throws std::invalid_argument.
    explicit BasicPool(std::size_t processes) : BasicPool(PoolOptions{.processes = processes}) {}
    /// Builds a pool as `options` say (see PoolOptions). Throws std::invalid_argument for bad options and
    /// std::system_error when a worker cannot be forked (the ones already started are killed and reaped).
    explicit BasicPool(PoolOptions options) : core_(make_core(std::move(options))) {}

    BasicPool(BasicPool&&) noexcept = default;
    BasicPool& operator=(BasicPool&&) = delete;
    BasicPool(const BasicPool&) = delete;
    BasicPool& operator=(const BasicPool&) = delete;

    /// close() then join(): queued work finishes, nothing is lost, no process is left behind.
    ~BasicPool() {
        if (!core_) return;
        try {
            close();
            join();
        } catch (...) {
            // A pool used in a forked child, or already broken: nothing more to wait for.
        }
    }

    /// Number of workers. Never blocks. Throws PoolStateError on a moved-from pool, like every member.
    [[nodiscard]] std::size_t size() const { return core().scheduler.size(); }
    /// Pids of the live workers: size() of them while the pool runs. Once a crash, a timeout or a recycling was
    /// reported, it waits for the replacement's fork (under a millisecond; a fork that fails is retried, and after
    /// a second it returns what there is). Does not wait when called from a callback. Thread-safe.
    [[nodiscard]] std::vector<pid_t> worker_pids() const { return core().scheduler.worker_pids(); }

    // ---- single calls ----------------------------------------------------------------------------------------------
    /// Runs f(args...) in a worker and returns its value; rethrows its exception. Blocks. Thread-safe.
    template <class F, class... Args>
    auto apply(F&& f, Args&&... args) {
        return apply_async(std::forward<F>(f), std::forward<Args>(args)...).get();
    }

    /// Queues f(args...) and returns at once. Arguments are encoded before it returns (later changes to them are
    /// not seen). Throws PoolStateError after close()/terminate(). Thread-safe.
    template <class F, class... Args>
    auto apply_async(F&& f, Args&&... args) {
        using Fn = std::decay_t<F>;
        using Item = std::tuple<detail::arg_t<Args>...>;
        using R = detail::checked_result_t<Fn, Item, true>;
        if constexpr (!detail::check_task<Fn, Item, true>() ||
                      !detail::check_transport<detail::SharedMemoryWorkers<Transport>, Fn, Item, R>()) {
            return AsyncResult<R>();
        } else {
            auto parts = detail::ApplyJob<R>::make(&detail::run_task<Fn, Item, true>, callable_bytes<Fn>(f));
            parts.state->set_helper(helper());
            keep_callable_alive<Fn>(*parts.job, f);
            detail::ItemEncoder<Item> items(parts.item, 1, detail::SharedMemoryWorkers<Transport>);
            items.add(Item(std::forward<Args>(args)...));
            core().scheduler.submit(parts.job, detail::Segment{items.finish(), 0, 1, 0});
            return AsyncResult<R>(std::move(parts.state));
        }
    }

    // ---- maps ------------------------------------------------------------------------------------------------------
    /// f applied to every element, results in input order. Blocks; reads the whole input first. If any item
    /// throws, map throws that exception (the first to arrive) and the items not started are dropped.
    template <class F, std::ranges::input_range Range>
    auto map(F&& f, Range&& range, MapOptions options = {}) {
        return wait_for(submit_map<false>(f, range, options));
    }
    /// Like map, but returns at once (the input is read and encoded before it returns).
    template <class F, std::ranges::input_range Range>
    auto map_async(F&& f, Range&& range, MapOptions options = {}) {
        return to_async(submit_map<false>(f, range, options));
    }
    /// Like map, with each element a tuple (std::tuple, std::pair, std::array) unpacked into f's arguments.
    template <class F, std::ranges::input_range Range>
    auto starmap(F&& f, Range&& range, MapOptions options = {}) {
        return wait_for(submit_map<true>(f, range, options));
    }
    template <class F, std::ranges::input_range Range>
    auto starmap_async(F&& f, Range&& range, MapOptions options = {}) {
        return to_async(submit_map<true>(f, range, options));
    }

    /// A lazy range of f's results in input order; reads input only as results are consumed (see ImapRange).
    /// An lvalue range is referenced (it must outlive the result), an rvalue range is moved in.
    template <class F, std::ranges::input_range Range>
    auto imap(F&& f, Range&& range, MapOptions options = {}) {
        return make_imap(f, std::forward<Range>(range), options, true);
    }
    /// Like imap, but results come in the order they complete.
    template <class F, std::ranges::input_range Range>
    auto imap_unordered(F&& f, Range&& range, MapOptions options = {}) {
        return make_imap(f, std::forward<Range>(range), options, false);
    }

    // ---- life cycle ------------------------------------------------------------------------------------------------
    /// No more submissions; queued work still runs (and imap ranges already made keep reading input). Never
    /// blocks. Thread-safe.
    void close() { core().scheduler.close(); }
    /// Stops the workers now: unfinished results fail with PoolStateError. Returns when every process is reaped.
    void terminate() { core().scheduler.terminate(); }
    /// Waits for queued work to finish and every process to exit. Throws PoolStateError before close() or
    /// terminate().
    void join() { core().scheduler.join(); }

private:
    friend struct detail::PoolAccess;

    static std::shared_ptr<Core> make_core(PoolOptions options) {
        detail::validate(options);
        typename Transport::Config config = Transport::make_config(options);
        detail::SchedulerSettings settings;
        settings.has_initializer = static_cast<bool>(options.initializer);
        // The scheduler stops and replaces workers only where the transport lets it; elsewhere make_config() has
        // refused these options, or passed them to the worker pools behind the transport (MPI ranks).
        if constexpr (detail::ReplaceableWorkers<Transport>) {
            settings.max_tasks_per_child = options.max_tasks_per_child;
            settings.task_timeout = options.task_timeout;
            settings.retries = options.retries;
        }
        return std::make_shared<Core>(std::move(config), settings);
    }

    template <class F>
    static detail::Buffer callable_bytes(const F& f) {
        detail::Buffer bytes;
        detail::encode_callable(bytes, f);
        return bytes;
    }
    /// A callable copied byte for byte that is not trivially copyable holds shared-object handles: the job keeps
    /// a real copy of it until it is done, so the objects it captured outlive the tasks that use them.
    template <class F>
    static void keep_callable_alive(detail::JobBase& job, const F& f) {
        if constexpr (!std::is_trivially_copyable_v<F> && !detail::serialized_callable_v<F>) {
            job.keep_alive.push_back(std::make_shared<F>(f));
        }
        job.code_pointer_callable = std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;
    }

    /// Result vectors of at least this many bytes are sized on a second thread while the input is encoded.
    static constexpr std::size_t kParallelSizingBytes = std::size_t{8} << 20;

    template <class Item, class Range>
    static std::shared_ptr<detail::ItemBlock> encode_items(Range& range) {
        std::size_t expected = 0;
        if constexpr (std::ranges::sized_range<Range>) expected = static_cast<std::size_t>(std::ranges::size(range));
        detail::ItemEncoder<Item> encoder(expected, detail::SharedMemoryWorkers<Transport>);
        if constexpr (std::ranges::contiguous_range<Range> && detail::bitwise<Item>() &&
                      std::is_same_v<std::remove_cv_t<std::ranges::range_value_t<Range>>, Item>) {
            encoder.add_contiguous(std::ranges::data(range), expected);
        } else {
            for (auto&& element : range) encoder.add(element);
        }
        return encoder.finish();
    }

    /// encode_items(), and the result vector of a map sized meanwhile on a second thread when it is large: its
    /// pages take the kernel milliseconds to fault in and zero, and the workers wait for both. Without a thread to
    /// be had, MapJob sizes it afterwards, as for small maps.
    template <class Item, class Range, class R>
    static std::shared_ptr<detail::ItemBlock> encode_sizing_result(Range& range,
                                                                   detail::ResultState<std::vector<R>>& state) {
        // Only where sizing runs no code of yours (value-initialised trivial types: zeroed memory).
        if constexpr (std::is_trivially_default_constructible_v<R> && !std::is_same_v<R, bool> &&
                      std::ranges::sized_range<Range>) {
            const auto n = static_cast<std::size_t>(std::ranges::size(range));
            if (n * sizeof(R) >= kParallelSizingBytes) {
                std::exception_ptr sizing_error;
                std::thread sizer;
                try {
                    sizer = std::thread([&] {
                        try {
                            detail::resize_for_overwrite(state.prepare(), n);
                        } catch (...) {
                            sizing_error = std::current_exception();
                        }
                    });
                } catch (...) {  // no thread to be had (std::system_error, std::bad_alloc): MapJob sizes it
                }
                std::shared_ptr<detail::ItemBlock> block;
                try {
                    block = encode_items<Item>(range);
                } catch (...) {
                    if (sizer.joinable()) sizer.join();
                    throw;
                }
                if (sizer.joinable()) sizer.join();
                if (sizing_error) std::rethrow_exception(sizing_error);
                return block;
            }
        }
        return encode_items<Item>(range);
    }
    template <class Item, class Range>
    static std::shared_ptr<detail::ItemBlock> encode_sizing_result(Range& range, detail::ResultState<void>&) {
        return encode_items<Item>(range);
    }

    /// Encodes the whole input and queues the map. Returns the state and whether the checks passed.
    template <bool Unpack, class F, class Range>
    auto submit_map(F& f, Range& range, MapOptions options) {
        using Fn = std::decay_t<F>;
        using Item = detail::range_item_t<Range>;
        static_assert(!Unpack || detail::tuple_like<Item>,
                      "procpool: starmap needs a range of tuples (std::tuple, std::pair or std::array) whose "
                      "elements are the function's arguments");
        using R = detail::checked_result_t<Fn, Item, Unpack>;
        using Output = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;
        if (options.buffersize != 0) {
            throw std::invalid_argument(
                "procpool: MapOptions::buffersize bounds what imap reads ahead; map and "
                "starmap read their whole input (use imap for a bounded read-ahead)");
        }
        auto state = std::make_shared<detail::ResultState<Output>>();
        state->set_helper(helper());
        if constexpr (detail::check_task<Fn, Item, Unpack>() &&
                      detail::check_transport<detail::SharedMemoryWorkers<Transport>, Fn, Item, R>()) {
            std::shared_ptr<detail::ItemBlock> block = encode_sizing_result<Item>(range, *state);
            const std::uint64_t count = block->count;
            auto job = std::make_shared<detail::MapJob<R>>(&detail::run_task<Fn, Item, Unpack>, callable_bytes<Fn>(f),
                                                           options.chunksize, count, state,
                                                           std::move(options.progress));
            keep_callable_alive<Fn>(*job, f);
            core().scheduler.submit(job, detail::Segment{std::move(block), 0, count, 0});
        }
        return state;
    }

    template <class Output>
    static auto wait_for(const std::shared_ptr<detail::ResultState<Output>>& state) {
        state->wait(std::nullopt);
        if constexpr (std::is_void_v<Output>) {
            (void)state->value();
        } else {
            return state->take_value();  // nobody else can see this state
        }
    }
    template <class Output>
    static AsyncResult<Output> to_async(std::shared_ptr<detail::ResultState<Output>> state) {
        return AsyncResult<Output>(std::move(state));
    }

    template <class F, class Range>
    auto make_imap(F& f, Range&& range, MapOptions options, bool ordered) {
        using Fn = std::decay_t<F>;
        using View = std::views::all_t<Range>;
        using Item = detail::range_item_t<View>;
        using R = detail::checked_result_t<Fn, Item, false>;
        using Job = detail::ImapJob<R>;
        static_assert(detail::check_task<Fn, Item, false>());
        static_assert(detail::check_transport<detail::SharedMemoryWorkers<Transport>, Fn, Item, R>());
        auto job = std::make_shared<Job>(&detail::run_task<Fn, Item, false>, callable_bytes<Fn>(f), options.chunksize,
                                         ordered);
        keep_callable_alive<Fn>(*job, f);
        std::optional<std::uint64_t> total;
        if constexpr (std::ranges::sized_range<Range>) total = static_cast<std::uint64_t>(std::ranges::size(range));
        job->progress.start(std::move(options.progress), total);
        // Like any submission, imap on a closed pool throws now rather than on first use.
        if (core().scheduler.closed()) core().scheduler.submit(job, detail::Segment{});
        return ImapRange<Transport, R, View>(shared_core(), std::move(job), std::views::all(std::forward<Range>(range)),
                                             options.chunksize, options.buffersize);
    }

    /// The scheduler as a WaitHelper, without keeping the pool alive.
    std::weak_ptr<detail::WaitHelper> helper() const {
        return std::shared_ptr<detail::WaitHelper>(core_, &core().scheduler);
    }
    std::shared_ptr<Core> shared_core() const {
        core();
        return core_;
    }
    Core& core() const {
        if (!core_) throw PoolStateError("procpool: this pool was moved from");
        return *core_;
    }

    std::shared_ptr<Core> core_;
};

/// The single-machine pool: forked worker processes, shared-memory rings.
using Pool = BasicPool<detail::ForkTransport>;

/// Satisfied by every pool (procpool::Pool, procpool::mpi::Pool): write code once, run it on either.
///     void work(procpool::ProcessPool auto& pool) { pool.map(f, items); }
template <class P>
concept ProcessPool = std::same_as<std::remove_cvref_t<P>, BasicPool<typename std::remove_cvref_t<P>::transport_type>>;

}  // namespace procpool
