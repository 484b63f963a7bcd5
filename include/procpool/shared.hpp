// procpool: memory and queues shared between processes: SharedArray, SharedValue, Queue.
//
// Handles, like the objects of sync.hpp: copies share one object, they pass to tasks as arguments or captures
// (made before or after the pool), workers see the same memory (zero copy), and the object is freed with the last
// handle in the process that made it. A handle a worker received stays valid at least until its task finished.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <new>
#include <optional>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "procpool/async_result.hpp"
#include "procpool/detail/buffer.hpp"
#include "procpool/detail/robust_mutex.hpp"
#include "procpool/detail/shared_handle.hpp"
#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"
#include "procpool/sync.hpp"

namespace procpool {

namespace detail {

/// The start of a SharedArray/SharedValue block: the lock get_lock() returns, then the length.
struct ArrayHeader {
    RobustMutex lock;
    std::uint64_t size;
};
inline constexpr std::size_t kArrayDataOffset = (sizeof(ArrayHeader) + 63) / 64 * 64;

template <class T>
inline constexpr bool shareable_v = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> && alignof(T) <= 64;

}  // namespace detail

/// A fixed-size array in shared memory (like multiprocessing.Array): every process that has a handle reads and
/// writes the same elements, zero-copy. Elements are not synchronised: guard them with get_lock() (or your own
/// Lock), or use atomics (std::atomic_ref). Zero-filled on creation.
template <class T>
class SharedArray : public detail::SharedHandle<SharedArray<T>, detail::kArrayObject> {
    using Handle = detail::SharedHandle<SharedArray<T>, detail::kArrayObject>;
    using Handle::ref_;
    static_assert(detail::shareable_v<T>,
                  "procpool: SharedArray<T> needs a trivially copyable T without pointers (its bytes are shared "
                  "between processes as they are). Use procpool::Queue<T> to pass other values between processes.");

public:
    using value_type = T;
    using size_type = std::size_t;
    using iterator = T*;
    using const_iterator = const T*;

    /// `size` zero-filled elements. Throws std::bad_alloc when the shared heap is exhausted.
    explicit SharedArray(std::size_t size) : SharedArray(create(size)) {}
    SharedArray(std::initializer_list<T> values) : SharedArray(create(values.size())) {
        std::copy(values.begin(), values.end(), data());
    }
    /// An array holding a copy of `range`.
    template <std::ranges::sized_range Range>
    requires std::convertible_to<std::ranges::range_reference_t<Range>, T>
    static SharedArray from_range(Range&& range) {
        SharedArray array(static_cast<std::size_t>(std::ranges::size(range)));
        std::ranges::copy(range, array.data());
        return array;
    }

    [[nodiscard]] std::size_t size() const noexcept { return header().size; }
    [[nodiscard]] bool empty() const noexcept { return size() == 0; }
    [[nodiscard]] T* data() const noexcept { return reinterpret_cast<T*>(ref_.address() + detail::kArrayDataOffset); }
    T& operator[](std::size_t i) const noexcept { return data()[i]; }
    /// Bounds-checked access; throws std::out_of_range.
    T& at(std::size_t i) const {
        if (i >= size()) {
            throw std::out_of_range("procpool: SharedArray::at(" + std::to_string(i) + ") on an array of " +
                                    std::to_string(size()) + " elements");
        }
        return data()[i];
    }
    [[nodiscard]] T* begin() const noexcept { return data(); }
    [[nodiscard]] T* end() const noexcept { return data() + size(); }
    [[nodiscard]] std::span<T> span() const noexcept { return {data(), size()}; }
    /// The lock that comes with the array (like multiprocessing.Array's get_lock()), for the standard helpers:
    ///     std::lock_guard guard(array.get_lock());   // Python: with array.get_lock():
    /// The reference is valid as long as this handle; copies of the Lock share the same lock. Never blocks.
    [[nodiscard]] Lock& get_lock() const noexcept { return lock_; }

private:
    friend Handle;
    static detail::SharedRef create(std::size_t size) {
        if (size > (std::size_t{1} << 46) / sizeof(T)) throw std::bad_alloc();
        detail::SharedRef ref = detail::SharedRef::create(detail::kArrayDataOffset + size * sizeof(T),
                                                          detail::kArrayObject);
        auto* header = new (ref.address()) detail::ArrayHeader();
        header->lock.init(false);
        header->size = size;
        return ref;
    }
    explicit SharedArray(detail::SharedRef ref)
        : Handle(std::move(ref)), lock_(ref_.inner(offsetof(detail::ArrayHeader, lock))) {}
    [[nodiscard]] detail::ArrayHeader& header() const noexcept { return this->template object<detail::ArrayHeader>(); }

    // A handle to the lock in the array's block, so get_lock() can return an lvalue (std::lock_guard takes one).
    // mutable: it is part of the handle, and locking through it changes nothing the handle owns.
    mutable Lock lock_;
};

/// One value in shared memory (like multiprocessing.Value).
template <class T>
class SharedValue {
    static_assert(detail::shareable_v<T>,
                  "procpool: SharedValue<T> needs a trivially copyable T without pointers (its bytes are shared "
                  "between processes as they are). Use procpool::Queue<T> to pass other values between processes.");

public:
    explicit SharedValue(T initial = T{}) : array_({initial}) {}

    /// The shared value itself. Not synchronised: guard it with get_lock(), or use std::atomic_ref.
    [[nodiscard]] T& value() const noexcept { return array_[0]; }
    /// The lock that comes with the value: `std::lock_guard guard(v.get_lock());`. Never blocks.
    [[nodiscard]] Lock& get_lock() const noexcept { return array_.get_lock(); }

    using procpool_handle_tag = void;
    void procpool_encode(OutputArchive& ar) const { array_.procpool_encode(ar); }
    static SharedValue procpool_decode(InputArchive& ar) { return SharedValue(SharedArray<T>::procpool_decode(ar)); }

private:
    explicit SharedValue(SharedArray<T> array) : array_(std::move(array)) {}
    SharedArray<T> array_;
};

/// A FIFO queue between processes (like multiprocessing.Queue) for any serializable T, with many producers and
/// consumers. `maxsize` 0 means unbounded (limited by the shared heap); otherwise put() waits while it is full.
/// Crash-safe: a process dying inside put() or get() never blocks the others (its robust lock is taken over and
/// the list repaired); an item being taken by a process that dies is lost with it.
template <class T>
class Queue : public detail::SharedHandle<Queue<T>, detail::kQueueObject> {
    using Handle = detail::SharedHandle<Queue<T>, detail::kQueueObject>;

public:
    explicit Queue(std::size_t maxsize = 0) : Handle(create(maxsize)) {}

    /// Appends `value`, waiting while the queue is full. Throws what encoding `value` throws.
    void put(const T& value) const { (void)put_until(value, std::nullopt); }
    /// Like put(), waiting at most `timeout`; false when the queue stayed full.
    template <class Rep, class Period>
    bool put(const T& value, std::chrono::duration<Rep, Period> timeout) const {
        return put_until(value, detail::deadline_after(timeout));
    }
    /// Appends without waiting; false when the queue is full.
    bool try_put(const T& value) const { return put_until(value, detail::MonotonicClock::now()); }

    /// Takes the oldest item, waiting while the queue is empty.
    T get() const { return *get_until(std::nullopt); }
    /// Like get(), waiting at most `timeout`; nothing when the queue stayed empty.
    template <class Rep, class Period>
    std::optional<T> get(std::chrono::duration<Rep, Period> timeout) const {
        return get_until(detail::deadline_after(timeout));
    }
    /// Takes the oldest item without waiting; nothing when the queue is empty.
    std::optional<T> try_get() const { return get_until(detail::MonotonicClock::now()); }

    /// Items queued now (it may change at once). Takes the queue's lock for a moment: after a process died inside
    /// put() or get(), the next locker recounts the items, and the count read without it could be one off.
    [[nodiscard]] std::size_t size() const {
        State& s = state();
        lock(s);
        const auto count = static_cast<std::size_t>(s.count.load());
        s.mutex.unlock();
        return count;
    }
    [[nodiscard]] bool empty() const { return size() == 0; }
    [[nodiscard]] std::size_t maxsize() const noexcept { return static_cast<std::size_t>(state().maxsize); }

private:
    friend Handle;
    struct State {
        detail::RobustMutex mutex;
        std::uint64_t head;  // offset of the oldest message block, 0 = none
        std::uint64_t tail;  // offset of the newest
        std::atomic<std::uint64_t> count;
        std::uint64_t maxsize;
        std::atomic<std::uint32_t> puts;  // futex word: bumped after every put
        std::atomic<std::uint32_t> gets;  // futex word: bumped after every get
        std::atomic<std::uint32_t> get_sleepers;
        std::atomic<std::uint32_t> put_sleepers;
    };
    struct Message {
        std::uint64_t next;
        std::uint64_t bytes;
        // payload follows
    };

    static detail::SharedRef create(std::size_t maxsize) {
        detail::SharedRef ref = detail::SharedRef::create(sizeof(State), detail::kQueueObject, &destroy);
        State* s = new (ref.address()) State();
        s->mutex.init(false);
        s->maxsize = maxsize;
        return ref;
    }
    /// Runs in the owner before the queue's block is freed: frees the messages still in it.
    static void destroy(void* state) {
        auto* s = static_cast<State*>(state);
        detail::SharedHeap& heap = detail::SharedHeap::instance();
        for (std::uint64_t at = s->head; at != 0;) {
            const std::uint64_t next = message(at)->next;
            heap.free(at);
            at = next;
        }
    }
    explicit Queue(detail::SharedRef ref) : Handle(std::move(ref)) {}
    [[nodiscard]] State& state() const noexcept { return this->template object<State>(); }
    static Message* message(std::uint64_t offset) noexcept {
        return std::launder(reinterpret_cast<Message*>(detail::SharedHeap::instance().address(offset)));
    }

    /// Locks the queue; after a holder died inside, rebuilds tail and count from the list (each link is one word,
    /// written before the tail moves, so the list from head is always whole).
    static void lock(State& s) {
        s.mutex.lock();
        if (s.mutex.recovered.load() == 0) return;
        std::uint64_t count = 0;
        std::uint64_t last = 0;
        for (std::uint64_t at = s.head; at != 0; at = message(at)->next) {
            last = at;
            ++count;
        }
        s.tail = last;
        s.count.store(count);
        s.mutex.recovered.store(0);
    }

    bool put_until(const T& value, detail::Deadline deadline) const {
        detail::Buffer encoded;
        OutputArchive ar(encoded);
        encode(ar, value);
        detail::SharedHeap& heap = detail::SharedHeap::instance();
        const std::uint64_t offset = heap.allocate(sizeof(Message) + encoded.size(), detail::kQueueMessage);
        Message* m = message(offset);
        m->next = 0;
        m->bytes = encoded.size();
        std::memcpy(reinterpret_cast<std::byte*>(m) + sizeof(Message), encoded.data(), encoded.size());

        State& s = state();
        lock(s);
        while (s.maxsize != 0 && s.count.load() >= s.maxsize) {
            const std::uint32_t seen = s.gets.load();
            s.put_sleepers.fetch_add(1);
            s.mutex.unlock();
            const bool in_time = detail::shared_wait(s.gets, seen, deadline);
            s.put_sleepers.fetch_sub(1);
            lock(s);
            if (!in_time && s.count.load() >= s.maxsize) {
                s.mutex.unlock();
                heap.free(offset);
                return false;
            }
        }
        if (s.tail != 0) {
            message(s.tail)->next = offset;
        } else {
            s.head = offset;
        }
        s.tail = offset;
        s.count.fetch_add(1);
        s.mutex.unlock();
        s.puts.fetch_add(1, std::memory_order_release);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (s.get_sleepers.load(std::memory_order_relaxed) != 0) detail::futex_wake(s.puts, 1, true);
        return true;
    }

    std::optional<T> get_until(detail::Deadline deadline) const {
        State& s = state();
        lock(s);
        while (s.count.load() == 0) {
            if (deadline && detail::MonotonicClock::now() >= *deadline) {
                s.mutex.unlock();
                return std::nullopt;
            }
            const std::uint32_t seen = s.puts.load();
            s.get_sleepers.fetch_add(1);
            s.mutex.unlock();
            (void)detail::shared_wait(s.puts, seen, deadline);
            s.get_sleepers.fetch_sub(1);
            lock(s);
        }
        const std::uint64_t offset = s.head;
        s.head = message(offset)->next;
        if (s.head == 0) s.tail = 0;
        s.count.fetch_sub(1);
        s.mutex.unlock();
        s.gets.fetch_add(1, std::memory_order_release);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (s.put_sleepers.load(std::memory_order_relaxed) != 0) detail::futex_wake(s.gets, 1, true);

        detail::SharedHeap& heap = detail::SharedHeap::instance();
        const Message* m = message(offset);
        try {
            InputArchive ar(
                std::span<const std::byte>(reinterpret_cast<const std::byte*>(m) + sizeof(Message), m->bytes));
            std::optional<T> value(detail::decode_as<T>(ar));
            heap.free(offset);
            return value;
        } catch (...) {
            heap.free(offset);
            throw;
        }
    }
};

}  // namespace procpool
