// procpool internals: a FIFO queue that keeps its memory.
//
// The scheduler pushes and pops a job's segments and a worker's queued tasks once per task. std::deque allocates
// a block on construction and frees and reallocates blocks as a queue moves through them, so at a million tasks a
// second it spends its time in malloc. Fifo stores its first N elements inline and keeps whatever capacity it
// grew to: a steady stream of push_back/pop_front costs no allocation at all.
#pragma once

#include <boost/container/small_vector.hpp>

#include <cassert>
#include <cstddef>
#include <utility>

namespace procpool::detail {

template <class T, std::size_t N>
class Fifo {
public:
    [[nodiscard]] bool empty() const noexcept { return head_ == items_.size(); }
    [[nodiscard]] std::size_t size() const noexcept { return items_.size() - head_; }

    T& front() noexcept {
        assert(!empty());
        return items_[head_];
    }
    const T& front() const noexcept {
        assert(!empty());
        return items_[head_];
    }
    T& back() noexcept {
        assert(!empty());
        return items_.back();
    }
    const T& back() const noexcept {
        assert(!empty());
        return items_.back();
    }
    T& operator[](std::size_t i) noexcept {
        assert(i < size());
        return items_[head_ + i];
    }
    const T& operator[](std::size_t i) const noexcept {
        assert(i < size());
        return items_[head_ + i];
    }

    void push_back(T value) {
        // Full: reuse the popped front if it is at least half the slots (so each element moves O(1) times on
        // average), grow otherwise.
        if (items_.size() == items_.capacity() && head_ * 2 >= items_.size()) compact();
        items_.push_back(std::move(value));
    }
    void push_front(T value) {
        if (head_ != 0) {
            items_[--head_] = std::move(value);
        } else {
            items_.insert(items_.begin(), std::move(value));
        }
    }
    void pop_front() noexcept {
        assert(!empty());
        items_[head_++] = T{};  // release what the element holds now, not when the slot is reused
        if (head_ == items_.size()) clear();
    }
    /// Removes the element `i` places from the front (the front itself as pop_front() does).
    void erase(std::size_t i) {
        assert(i < size());
        if (i == 0) {
            pop_front();
        } else {
            items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(head_ + i));
        }
    }
    void pop_back() noexcept {
        assert(!empty());
        items_.pop_back();
        if (head_ == items_.size()) clear();
    }
    /// Removes every element; keeps the capacity.
    void clear() noexcept {
        items_.clear();
        head_ = 0;
    }

    auto begin() noexcept { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
    auto end() noexcept { return items_.end(); }
    auto begin() const noexcept { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
    auto end() const noexcept { return items_.end(); }

private:
    void compact() {
        items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
        head_ = 0;
    }

    boost::container::small_vector<T, N> items_;
    std::size_t head_ = 0;  // elements before it were popped
};

}  // namespace procpool::detail
