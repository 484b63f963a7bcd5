// procpool internals: the task wire format and the worker side of running one task.
//
// A task message is   TaskHeader | callable bytes (padded to 8) | the encoded items, back to back
//                     (or, with kItemsByReference, an ItemsReference to them in shared memory).
// A result message is ResultHeader | error records | encoded values of the items that succeeded, in item order.
// A worker may answer one task with several result messages (partial deliveries, see TaskRunner::begin_item).
//
// Which code runs is named by `TaskHeader::entry`: the address of an instantiation of run_task<F, Item, Unpack>,
// valid in the worker because workers are forked from the same program image (the MPI transport maps it to a
// stable id instead).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/config.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/ring.hpp"
#include "procpool/detail/stack_check.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

// ---- message kinds ----------------------------------------------------------------------------------------------
enum TaskRingMessage : std::uint16_t { kTaskMessage = 1, kExitMessage = 2 };
enum ResultRingMessage : std::uint16_t {
    kResultMessage = 1,
    kInitFailedMessage = 2,
    kResultInAreaMessage = 3,  // fork transport: a ResultInArea, the result message is in the worker's result area
};

/// Claim states of a task message still in a worker's task ring: the worker takes it, or the parent revokes it to give
/// it to an idle worker. Exactly one compare-exchange from kUnclaimed wins.
enum ClaimState : std::uint32_t { kUnclaimed = 0, kTaken = 1, kRevoked = 2 };

struct TaskHeader {
    std::uint64_t task_id;
    std::uint64_t entry;  // the TaskEntry, as the transport encodes it
    std::uint32_t claim;  // ClaimState; accessed through std::atomic_ref
    std::uint32_t item_count;
    std::uint32_t callable_size;
    std::uint32_t flags;  // TaskFlag bits
};
static_assert(sizeof(TaskHeader) == 32 && offsetof(TaskHeader, claim) % alignof(std::uint32_t) == 0,
              "TaskHeader is read in place from 8-byte aligned ring memory");
static_assert(std::atomic_ref<std::uint32_t>::is_always_lock_free, "the claim word must be lock-free");

enum TaskFlag : std::uint32_t {
    kTimedItems = 1,           // the worker stamps each item's start time (task_timeout)
    kCodePointerCallable = 2,  // the callable is a function pointer (a transport between machines renames it)
    kItemsByReference = 4,     // the items are not in the message: an ItemsReference to memory the worker shares
    kItemIndex = 8,            // an ItemIndex follows the callable: where each item starts (for a group to split it)
};

/// Where the items of a task start, sent before them when a group of workers receives the task (kItemIndex):
/// `stride` when every item has that size, else 0 followed by item_count + 1 offsets from the first item's start.
struct ItemIndexHeader {
    std::uint64_t stride;
};

/// Where a task's items are when the message does not carry them (kItemsByReference): an address in the bulk
/// arena, mapped at the same address in the parent and every worker, valid until the task's final result.
struct ItemsReference {
    std::uint64_t address;
    std::uint64_t size;
};

struct ResultHeader {
    std::uint64_t task_id;
    std::uint32_t first;  // task-relative index of the first item this message covers
    std::uint32_t count;  // items covered: each either has a value below or an error record
    std::uint32_t error_count;
    std::uint32_t flags;        // kFinalResult on the task's last message
    std::uint64_t busy_ns;      // worker time spent on these items
    std::uint64_t errors_size;  // bytes of error records that follow this header
};
static_assert(sizeof(ResultHeader) == 40, "ResultHeader layout is part of the wire format");
enum ResultFlag : std::uint32_t { kFinalResult = 1 };

// ---- worker side ------------------------------------------------------------------------------------------------
/// Where a worker's result messages go (the fork transport writes them to the worker's result ring).
class ResultSink {
public:
    /// Sends one result message: the pieces back to back, `total` bytes in all.
    virtual void send_result(std::span<const Piece> pieces, std::size_t total) = 0;
    /// The buffer the values of the next result message are encoded into, asked as the first value of each
    /// message is about to be written: `own` (the runner's buffer), or one of the sink's where the message may
    /// be sent without copying the values again. Whatever it returns is empty.
    virtual Buffer& values_buffer(Buffer& own) noexcept { return own; }

protected:
    ~ResultSink() = default;
};

/// Shared words a worker updates while it runs items, read by the parent for crash attribution and timeouts.
struct ProgressWords {
    std::atomic<std::uint64_t>* item = nullptr;
    std::atomic<std::int64_t>* item_start_ns = nullptr;
};

/// A copy of a bitwise T made from its bytes: a plain T where T can be default-constructed trivially (the
/// compiler keeps it in a register), otherwise raw storage (copying the bytes of a trivially copyable type creates
/// it).
template <class T>
class BitwiseCopy {
public:
    explicit BitwiseCopy(const std::byte* bytes) noexcept { std::memcpy(&storage_, bytes, sizeof(T)); }
    T& get() noexcept {
        if constexpr (kPlain) {
            return storage_;
        } else {
            return *std::launder(reinterpret_cast<T*>(&storage_));
        }
    }

private:
    static constexpr bool kPlain = std::is_trivially_default_constructible_v<T>;
    struct alignas(T) Raw {
        std::byte bytes[sizeof(T)];
    };
    std::conditional_t<kPlain, T, Raw> storage_;
};

/// Runs one task's items on the worker side and streams their results back. Results are sent when the task ends
/// and, for long tasks, whenever `flush_interval` has passed since the last send, so completed items reach the
/// caller (and survive a later crash of the worker) without a message per tiny item.
class TaskRunner {
public:
    PROCPOOL_DECL TaskRunner(const TaskHeader& header, std::span<const std::byte> callable,
                             std::span<const std::byte> items, ResultSink& sink, ProgressWords progress, Buffer& values,
                             Buffer& errors, std::chrono::nanoseconds flush_interval);

    [[nodiscard]] std::span<const std::byte> callable() const noexcept { return callable_; }
    [[nodiscard]] InputArchive& items() noexcept { return items_; }
    [[nodiscard]] std::uint32_t count() const noexcept { return count_; }

    /// Marks item `index` as started: publishes progress and sends the results gathered so far when they are due.
    /// With a task timeout, every finished item is sent before the next starts (a hang then never takes finished
    /// results down with it), and the start time is published after the send so the send does not count.
    void begin_item(std::uint32_t index) {
        current_ = index;
        if (timed_) {
            if (index != first_unsent_) send(monotonic_ns(), false);
            // The parent reads item after start: a torn read can only make it see an older item with a newer
            // start, which delays a kill rather than killing early.
            progress_.item_start_ns->store(monotonic_ns(), std::memory_order_relaxed);
            progress_.item->store(index, std::memory_order_release);
            return;
        }
        if (progress_.item != nullptr) progress_.item->store(index, std::memory_order_relaxed);
        if (index == first_unsent_ || --countdown_ > 0) return;
        countdown_ = look_at_clock();
    }

    void item_done() noexcept {}

    template <class R>
    void item_done(const R& value) {
        Buffer& values = values_for_writing();
        const std::size_t mark = values.size();
        try {
            OutputArchive ar(values);
            encode(ar, value);
        } catch (...) {
            values.truncate(mark);
            item_failed();
        }
    }

    /// Records the exception being handled as the current item's error. Call only inside a catch block.
    void item_failed() { record_error(current_); }

    /// Records the exception being handled for items [from, count): used when the input stream itself is broken.
    PROCPOOL_DECL void fail_rest(std::uint32_t from);

    /// Sends everything not sent yet as the task's final result message.
    void finish() { send(monotonic_ns(), true); }

    /// Runs items through `call` when items and results are raw bytes (bitwise) and there is no task timeout:
    /// items are read and results written in place, a block at a time, where the item loop goes through an archive
    /// per item. The messages, the progress word (per item: crash attribution) and the flush rule are the item
    /// loop's. Returns the first item it did not run: count() when it ran them all, 0 when the item loop has to
    /// (a timeout, items that do not fill the message exactly), or where no memory was left for a block of
    /// results (the item loop goes on from there and fails the items whose values do not fit).
    template <class Item, class Result, class Call>
    std::uint32_t run_bitwise(Call&& call) {
        static_assert(bitwise<Item>() && bitwise<Result>());
        if (timed_ || items_.remaining() != std::size_t{count_} * sizeof(Item)) return 0;
        std::atomic<std::uint64_t> unused{0};
        std::atomic<std::uint64_t>& progress = progress_.item != nullptr ? *progress_.item : unused;
        for (std::uint32_t i = 0; i < count_;) {
            progress.store(i, std::memory_order_relaxed);
            const std::uint32_t end = i + std::min(next_block(i), count_ - i);
            Buffer& values = values_for_writing();
            const std::size_t mark = values.size();
            std::byte* block = nullptr;
            try {
                block = values.extend(std::size_t{end - i} * sizeof(Result));
            } catch (const std::bad_alloc&) {
                return i;
            }
            const std::byte* in = items_.take(std::size_t{end - i} * sizeof(Item));
            std::byte* out = block;
            for (; i < end; ++i, in += sizeof(Item)) {
                progress.store(i, std::memory_order_relaxed);
                BitwiseCopy<Item> item(in);
                try {
                    const Result& value = call(item.get());
                    std::memcpy(out, std::addressof(value), sizeof(Result));
                    out += sizeof(Result);
                } catch (...) {
                    current_ = i;
                    item_failed();
                }
            }
            values.truncate(mark + static_cast<std::size_t>(out - block));  // failed items wrote nothing
        }
        return count_;
    }

private:
    /// The buffer to append values to: while it is empty (a new message), the one the sink asks for.
    Buffer& values_for_writing() noexcept {
        if (values_->empty()) values_ = &sink_.values_buffer(own_values_);
        return *values_;
    }

    /// run_bitwise's begin_item: item `index` starts a block. Sends the results gathered so far when they are due
    /// and returns how many items to run before looking at the clock again.
    PROCPOOL_DECL std::uint32_t next_block(std::uint32_t index);

    /// Sends the results gathered before current_ if flush_interval has passed since the last send, and returns
    /// how many items to run before looking again: fast items double it (up to kMaxStride), slow items or a send
    /// reset it to every item.
    PROCPOOL_DECL std::uint32_t look_at_clock();

    PROCPOOL_DECL void record_error(std::uint32_t index);

    PROCPOOL_DECL void send(std::int64_t now, bool final);

    std::uint64_t task_id_;
    std::uint32_t count_;
    bool timed_;
    std::span<const std::byte> callable_;
    InputArchive items_;
    ResultSink& sink_;
    ProgressWords progress_;
    Buffer& own_values_;  // the values buffer the runner was given
    Buffer* values_;      // where the values of the message being gathered go (values_for_writing())
    Buffer& errors_;
    std::int64_t flush_interval_ns_;
    std::int64_t last_flush_ns_ = 0;
    std::int64_t last_check_ns_ = 0;
    std::uint32_t current_ = 0;
    std::uint32_t first_unsent_ = 0;
    std::uint32_t error_count_ = 0;
    /// At most this many items run between two looks at the clock: finished results wait at most that long to
    /// be sent (a crash fails the items run but not sent).
    static constexpr std::uint32_t kMaxStride = 256;
    std::uint32_t stride_ = 1;
    std::uint32_t countdown_ = 1;
};

using TaskEntry = void (*)(TaskRunner&);

// ---- what a task may be -----------------------------------------------------------------------------------------
/// Callables that cross into the worker through their serialize() member (an explicit choice wins).
template <class F>
inline constexpr bool serialized_callable_v = user_serializable_v<F>&& std::is_default_constructible_v<F>;

/// Callables copied into the worker byte for byte (workers run the same program image): function pointers,
/// captureless lambdas, lambdas and function objects with trivially copyable captures, and those whose captures
/// can all be copied without throwing, which admits procpool's shared-object handles (fork-aware, see
/// detail/shared_handle.hpp) while rejecting captures that own heap memory (std::string, std::vector,
/// std::function: their copies can throw). The worker uses its byte copy in place and never destroys it.
template <class F>
inline constexpr bool byte_callable_v =
    !serialized_callable_v<F> && std::is_class_v<F> ? std::is_nothrow_copy_constructible_v<F> : bitwise<F>();

template <class F>
inline constexpr bool transferable_callable_v = serialized_callable_v<F> || byte_callable_v<F>;

/// Encodes the callable of a submission. Throws std::invalid_argument for a callable copied byte for byte that
/// refers to the calling thread's stack (a capture by reference: see detail/stack_check.hpp).
template <class F>
void encode_callable(Buffer& out, const F& f) {
    if constexpr (serialized_callable_v<F>) {
        OutputArchive ar(out);
        encode(ar, f);
    } else {
        check_callable_captures(f);
        out.append(static_cast<const void*>(std::addressof(f)), sizeof f);
    }
}

/// The callable in the worker: decoded, or a byte copy used in place (never copied again, never destroyed).
template <class F>
class WorkerCallable {
public:
    explicit WorkerCallable(std::span<const std::byte> bytes) {
        if constexpr (serialized_callable_v<F>) {
            InputArchive ar(bytes);
            decoded_.emplace(decode_as<F>(ar));
        } else {
            if (bytes.size() != sizeof(F)) throw SerializationError("procpool: corrupt callable");
            std::memcpy(storage_, bytes.data(), sizeof(F));
        }
    }
    F& get() noexcept {
        if constexpr (serialized_callable_v<F>) {
            return *decoded_;
        } else {
            return *std::launder(reinterpret_cast<F*>(storage_));
        }
    }

private:
    struct Empty {};
    std::conditional_t<serialized_callable_v<F>, std::optional<F>, Empty> decoded_;
    alignas(F) std::byte storage_[serialized_callable_v<F> ? 1 : sizeof(F)];
};

template <class T>
concept tuple_like = requires {
    std::tuple_size<T>::value;
};

template <class F, class Tuple, class = std::make_index_sequence<std::tuple_size_v<Tuple>>>
struct apply_traits;
template <class F, class Tuple, std::size_t... I>
struct apply_traits<F, Tuple, std::index_sequence<I...>> {
    static constexpr bool by_rvalue = std::is_invocable_v<F&, std::tuple_element_t<I, Tuple>&&...>;
    static constexpr bool by_lvalue = std::is_invocable_v<F&, std::tuple_element_t<I, Tuple>&...>;
    template <bool Rvalue>
    using result = std::invoke_result_t<
        F&, std::conditional_t<Rvalue, std::tuple_element_t<I, Tuple>&&, std::tuple_element_t<I, Tuple>&>...>;
};

/// How a worker calls F on one decoded Item: f(item), or std::apply(f, item) when Unpack. Items are passed as
/// rvalues when F accepts them (no copy of a large argument), as lvalues otherwise.
template <class F, class Item, bool Unpack>
struct Invocation {
    // Immediately-invoked lambdas, not static consteval member functions: a member function is not defined yet
    // where `invocable` is initialised (the class is incomplete), which Clang rejects.
    static constexpr bool rvalue_ok = [] {
        if constexpr (!Unpack) return std::is_invocable_v<F&, Item&&>;
        else if constexpr (tuple_like<Item>) return apply_traits<F, Item>::by_rvalue;
        else return false;
    }();
    static constexpr bool lvalue_ok = [] {
        if constexpr (!Unpack) return std::is_invocable_v<F&, Item&>;
        else if constexpr (tuple_like<Item>) return apply_traits<F, Item>::by_lvalue;
        else return false;
    }();
    static constexpr bool invocable = rvalue_ok || lvalue_ok;

    static decltype(auto) call(F& f, Item& item) {
        if constexpr (rvalue_ok) {
            if constexpr (Unpack) return std::apply(f, std::move(item));
            else return std::invoke(f, std::move(item));
        } else {
            if constexpr (Unpack) return std::apply(f, item);
            else return std::invoke(f, item);
        }
    }
};

template <class F, class Item, bool Unpack>
using raw_result_t = decltype(Invocation<F, Item, Unpack>::call(std::declval<F&>(), std::declval<Item&>()));

/// The value type a task produces: the callable's result without reference or cv qualifiers (void stays void).
template <class F, class Item, bool Unpack>
using task_result_t = std::remove_cvref_t<raw_result_t<F, Item, Unpack>>;

/// The worker side of every task: decode the callable, then for each item decode, call, record.
template <class F, class Item, bool Unpack>
void run_task(TaskRunner& run) {
    using Result = task_result_t<F, Item, Unpack>;
    std::optional<WorkerCallable<F>> callable;
    try {
        callable.emplace(run.callable());
    } catch (...) {
        run.fail_rest(0);
        run.finish();
        return;
    }
    F* f = &callable->get();
    std::uint32_t first = 0;
    if constexpr (bitwise<Item>() && !std::is_void_v<Result> && bitwise<Result>()) {
        const auto call = [f](Item& item) -> decltype(auto) { return Invocation<F, Item, Unpack>::call(*f, item); };
        first = run.template run_bitwise<Item, Result>(call);
    }
    for (std::uint32_t i = first; i < run.count(); ++i) {
        run.begin_item(i);
        std::optional<Item> item;
        try {
            item.emplace(decode_as<Item>(run.items()));
        } catch (...) {
            run.fail_rest(i);  // the item stream is unreadable from here on
            break;
        }
        try {
            if constexpr (std::is_void_v<Result>) {
                Invocation<F, Item, Unpack>::call(*f, *item);
                run.item_done();
            } else {
                run.item_done(static_cast<const Result&>(Invocation<F, Item, Unpack>::call(*f, *item)));
            }
        } catch (...) {
            run.item_failed();
        }
    }
    run.finish();
}

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/task.ipp"
#endif
