// procpool internals: a FIFO queue that keeps its memory.
//
// The scheduler pushes and pops a job's segments and a worker's queued tasks once per task. std::deque allocates
// a block on construction and frees and reallocates blocks as a queue moves through them, so at a million tasks a
// second it spends its time in malloc. Fifo stores its first N elements inline and keeps whatever capacity it
// grew to: a steady stream of push_back/pop_front costs no allocation at all.
//
// The elements are contiguous: slots [head_, tail_) of the storage hold them, the slots before head_ were popped
// (and their elements destroyed at once), the slots from tail_ are free.
#pragma once

#include <bit>
#include <cassert>
#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace procpool::detail {

template <class T, std::size_t N>
class Fifo {
    static_assert(N > 0, "Fifo keeps at least one element inline");
    static_assert(std::is_nothrow_move_constructible_v<T> && std::is_nothrow_destructible_v<T>,
                  "Fifo moves its elements when it grows or compacts: a move that throws would lose them");

public:
    Fifo() noexcept = default;
    Fifo(const Fifo& other) : Fifo() {
        for (const T& value : other) push_back(value);
    }
    Fifo(Fifo&& other) noexcept { take(other); }
    Fifo& operator=(const Fifo& other) {
        if (this != &other) {
            Fifo copy(other);
            clear();
            release_storage();
            take(copy);
        }
        return *this;
    }
    Fifo& operator=(Fifo&& other) noexcept {
        if (this != &other) {
            clear();
            release_storage();
            take(other);
        }
        return *this;
    }
    ~Fifo() {
        clear();
        release_storage();
    }

    [[nodiscard]] bool empty() const noexcept { return head_ == tail_; }
    [[nodiscard]] std::size_t size() const noexcept { return tail_ - head_; }

    T& front() noexcept {
        assert(!empty());
        return slots()[head_];
    }
    const T& front() const noexcept {
        assert(!empty());
        return slots()[head_];
    }
    T& back() noexcept {
        assert(!empty());
        return slots()[tail_ - 1];
    }
    const T& back() const noexcept {
        assert(!empty());
        return slots()[tail_ - 1];
    }
    T& operator[](std::size_t i) noexcept {
        assert(i < size());
        return slots()[head_ + i];
    }
    const T& operator[](std::size_t i) const noexcept {
        assert(i < size());
        return slots()[head_ + i];
    }

    void push_back(T value) {
        // Full: reuse the popped front if it is at least half the slots (so each element moves O(1) times on
        // average), grow otherwise.
        if (tail_ == capacity_) {
            if (head_ * 2 >= tail_) {
                compact();
            } else {
                grow();
            }
        }
        std::construct_at(slots() + tail_, std::move(value));
        ++tail_;
    }
    /// Makes room for one more element, so that the next push_back() allocates nothing and cannot throw. Throws
    /// std::bad_alloc (and then changes nothing): a caller about to take an element from elsewhere calls this first,
    /// so that a failed allocation cannot lose it.
    void reserve_one() {
        if (tail_ == capacity_ && head_ * 2 < tail_) grow();
    }
    /// Makes room for `total` elements in all: while the queue holds at most that many, push_back() allocates
    /// nothing and cannot throw, whatever pops come between. Throws std::bad_alloc (and then changes nothing).
    void reserve_total(std::size_t total) {
        // push_back() grows only when full with fewer than half the slots popped; with at least twice `total` slots
        // and at most `total` elements, a full queue has popped at least half of them.
        if (capacity_ / 2 < total) grow_to(std::bit_ceil(total * 2));
    }
    void push_front(T value) {
        if (head_ != 0) {
            std::construct_at(slots() + head_ - 1, std::move(value));
            --head_;
            return;
        }
        if (tail_ == capacity_) grow();
        T* at = slots();
        for (std::size_t i = tail_; i > 0; --i) {  // one slot to the back each, the last first
            std::construct_at(at + i, std::move(at[i - 1]));
            std::destroy_at(at + i - 1);
        }
        std::construct_at(at, std::move(value));
        ++tail_;
    }
    void pop_front() noexcept {
        assert(!empty());
        std::destroy_at(slots() + head_);  // releases what the element holds now, not when the slot is reused
        ++head_;
        if (head_ == tail_) head_ = tail_ = 0;
    }
    /// Removes the element `i` places from the front (the front itself as pop_front() does).
    void erase(std::size_t i) noexcept {
        assert(i < size());
        if (i == 0) {
            pop_front();
            return;
        }
        T* at = slots();
        std::destroy_at(at + head_ + i);
        for (std::size_t j = head_ + i; j + 1 < tail_; ++j) {  // the later ones one slot to the front each
            std::construct_at(at + j, std::move(at[j + 1]));
            std::destroy_at(at + j + 1);
        }
        --tail_;
    }
    void pop_back() noexcept {
        assert(!empty());
        --tail_;
        std::destroy_at(slots() + tail_);
        if (head_ == tail_) head_ = tail_ = 0;
    }
    /// Removes every element; keeps the capacity.
    void clear() noexcept {
        std::destroy(slots() + head_, slots() + tail_);
        head_ = tail_ = 0;
    }

    T* begin() noexcept { return slots() + head_; }
    T* end() noexcept { return slots() + tail_; }
    const T* begin() const noexcept { return slots() + head_; }
    const T* end() const noexcept { return slots() + tail_; }

private:
    T* slots() noexcept { return heap_ != nullptr ? heap_ : std::launder(reinterpret_cast<T*>(inline_)); }
    const T* slots() const noexcept {
        return heap_ != nullptr ? heap_ : std::launder(reinterpret_cast<const T*>(inline_));
    }

    /// Moves the elements to the first slots.
    void compact() noexcept {
        T* at = slots();
        const std::size_t n = size();
        for (std::size_t i = 0; i < n; ++i) {  // slot i is free by the time element i moves there
            std::construct_at(at + i, std::move(at[head_ + i]));
            std::destroy_at(at + head_ + i);
        }
        head_ = 0;
        tail_ = n;
    }

    /// Moves the elements to the first slots of new storage of twice the capacity. Throws std::bad_alloc (and then
    /// changes nothing).
    void grow() { grow_to(capacity_ * 2); }
    /// Moves the elements to the first slots of new storage of `capacity` slots (more than now). Throws
    /// std::bad_alloc (and then changes nothing).
    void grow_to(std::size_t capacity) {
        T* bigger = std::allocator<T>().allocate(capacity);
        T* at = slots();
        const std::size_t n = size();
        for (std::size_t i = 0; i < n; ++i) {
            std::construct_at(bigger + i, std::move(at[head_ + i]));
            std::destroy_at(at + head_ + i);
        }
        if (heap_ != nullptr) std::allocator<T>().deallocate(heap_, capacity_);
        heap_ = bigger;
        capacity_ = capacity;
        head_ = 0;
        tail_ = n;
    }

    /// Back to the inline slots (the queue must be empty).
    void release_storage() noexcept {
        if (heap_ != nullptr) std::allocator<T>().deallocate(heap_, capacity_);
        heap_ = nullptr;
        capacity_ = N;
    }

    /// Takes `other`'s elements (its storage, if on the heap) and leaves it empty. This one must be empty and its
    /// storage inline.
    void take(Fifo& other) noexcept {
        assert(empty() && heap_ == nullptr);
        if (other.heap_ != nullptr) {
            heap_ = std::exchange(other.heap_, nullptr);
            capacity_ = std::exchange(other.capacity_, N);
            head_ = std::exchange(other.head_, 0);
            tail_ = std::exchange(other.tail_, 0);
            return;
        }
        for (T& value : other) push_back(std::move(value));  // at most N: fits inline
        other.clear();
    }

    T* heap_ = nullptr;  // the storage once it outgrew the inline slots
    std::size_t capacity_ = N;
    std::size_t head_ = 0;  // elements before it were popped
    std::size_t tail_ = 0;  // one past the last element
    alignas(T) std::byte inline_[N * sizeof(T)];
};

}  // namespace procpool::detail
