// procpool internals: the encoded input of a submission. An ItemEncoder writes the items into an ItemBlock (in shared
// memory when the workers can read them there); the scheduler sends runs of a block (Segments) as tasks.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/fifo.hpp"
#include "procpool/detail/stack_check.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

/// Encoded items, back to back; item i starts at offset(i).
struct ItemBlock {
    Buffer bytes;
    std::vector<std::shared_ptr<const void>> keep_alive;  // shared objects the items refer to
    std::vector<std::uint64_t> offsets;  // start of each item, plus the end; empty if stride is set or count <= 1
    std::uint64_t stride = 0;            // every item has this encoded size (bitwise items)
    std::uint64_t count = 0;
    std::uint64_t base = 0;  // where item 0 starts in `bytes` with a stride or a single item (a received task's block)

    [[nodiscard]] std::uint64_t offset(std::uint64_t i) const noexcept {
        if (stride != 0) return base + i * stride;
        if (offsets.empty()) return i == 0 ? base : bytes.size();  // one item (an apply): no offsets to allocate
        return offsets[i];
    }
    [[nodiscard]] std::span<const std::byte> items(std::uint64_t first, std::uint64_t n) const noexcept {
        const std::uint64_t begin = offset(first);
        return {bytes.data() + begin, offset(first + n) - begin};
    }
};

/// Builds an ItemBlock from items of type Item (one per call of the task function).
template <class Item>
class ItemEncoder {
public:
    /// Encodes into a new block (finish() returns it). A `shareable` block puts capacities from `shareable_from`
    /// bytes up in the bulk arena, where a pool's workers read the items in place (for transports whose workers
    /// share our memory).
    explicit ItemEncoder(std::size_t expected = 0, bool shareable = false,
                         std::size_t shareable_from = Buffer::kShareableThreshold)
        : ItemEncoder(std::make_shared<ItemBlock>(), expected, shareable, shareable_from) {}
    /// Encodes into `block`, a fresh one someone else owns (finish() returns it too).
    ItemEncoder(std::shared_ptr<ItemBlock> block, std::size_t expected, bool shareable = false,
                std::size_t shareable_from = Buffer::kShareableThreshold)
        : block_(std::move(block)) {
        if (shareable) block_->bytes = Buffer::shareable(shareable_from);
        if constexpr (bitwise<Item>()) {
            block_->stride = sizeof(Item);
            block_->bytes.reserve(expected * sizeof(Item));
        } else if (expected > 1) {
            block_->offsets.reserve(expected + 1);
        }
    }

    /// Adds one item (converted to Item). Throws std::invalid_argument for a struct holding an address in this
    /// thread's stack (detail/stack_check.hpp), and what encoding throws.
    template <class Value>
    void add(const Value& value) {
        if constexpr (bitwise<Item>()) {
            const Item item(value);
            check_argument_bytes(item, stack_);
            block_->bytes.append(&item, sizeof item);
        } else {
            check_argument_bytes(value, stack_);
            if (block_->count == 1) block_->offsets.push_back(0);  // a second item: offsets become explicit
            if (block_->count != 0) block_->offsets.push_back(block_->bytes.size());
            OutputArchive ar(block_->bytes, &block_->keep_alive);
            if constexpr (std::is_same_v<std::remove_cvref_t<Value>, Item>) {
                encode(ar, value);
            } else {
                encode(ar, static_cast<Item>(value));
            }
        }
        ++block_->count;
    }

    /// Adds `n` bitwise items stored contiguously at `first` with one copy.
    void add_contiguous(const Item* first, std::size_t n) {
        static_assert(bitwise<Item>());
        check_argument_run(first, n, stack_);
        block_->bytes.append_for_reader(first, n * sizeof(Item));
        block_->count += n;
    }

    [[nodiscard]] std::uint64_t count() const noexcept { return block_->count; }
    [[nodiscard]] std::size_t bytes() const noexcept { return block_->bytes.size(); }

    std::shared_ptr<ItemBlock> finish() {
        if constexpr (!bitwise<Item>()) {
            if (!block_->offsets.empty()) block_->offsets.push_back(block_->bytes.size());
        }
        return std::move(block_);
    }

private:
    std::shared_ptr<ItemBlock> block_;
    StackRange stack_ = StackRange::of_this_thread();  // items must not point into it
};

/// A run of a job's items waiting to be sent: items [block_first, block_first + count) of `block`, which are the
/// job's items [job_first, job_first + count).
struct Segment {
    /// avoid_slot when any worker may take it.
    static constexpr std::uint32_t kAnySlot = ~std::uint32_t{0};

    std::shared_ptr<const ItemBlock> block;
    std::uint64_t block_first = 0;
    std::uint64_t count = 0;
    std::uint64_t job_first = 0;
    /// A retried item's segment avoids the worker slot it died in, when another worker can take it.
    std::uint32_t avoid_slot = kAnySlot;

    /// Splits off and returns the first `n` items.
    Segment take_front(std::uint64_t n) {
        Segment front{block, block_first, n, job_first, avoid_slot};
        block_first += n;
        count -= n;
        job_first += n;
        return front;
    }
};

/// A job's segments not sent yet, in order. Usually holds one segment, inline: an apply_async costs no
/// allocation here.
using SegmentQueue = Fifo<Segment, 1>;

}  // namespace procpool::detail
