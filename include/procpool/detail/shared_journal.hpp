// procpool internals: how the shared containers (containers.hpp) change their structure so that a process killed
// at any instruction leaves them consistent.
//
// Every change becomes visible through one aligned 64-bit store, its commit word: a slot of a hash table, the
// pointer to a table, a list's length. Before that store, with the container's robust mutex held, the change is
// recorded in the container's Journal: which word, the value the word holds once the change is committed, the heap
// block the change brings in (a new entry or table) and the one it takes out. After the store the removed block is
// freed, and the record cleared last.
//
// A locker that takes the mutex over from a holder that died (EOWNERDEAD) calls recover(): if the commit word holds
// the committed value, the change happened and the removed block is freed (roll forward); otherwise it never
// happened and the added block is freed (roll back). A block is freed only while it still has the generation the
// record names (the shared heap gives each allocation a new one), so recovery never frees a block twice, even when
// the dead holder had freed it already and another process allocated it again since. Recovery is itself a series of
// such steps: a recoverer that dies too leaves the record for the next one.
//
// What a death can leak: a block the process had allocated but not recorded yet (a new entry waiting for the lock),
// or what the shared heap leaks when a process dies inside it (the block it was handling): one block at most.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "procpool/detail/shared_heap.hpp"

namespace procpool::detail {

/// Reads a word that commits a change (acquire: what was written before its commit is visible).
inline std::uint64_t load_word(std::uint64_t& word) noexcept {
    return std::atomic_ref<std::uint64_t>(word).load(std::memory_order_acquire);
}
/// Stores a word in program order with every store before it: a process killed after this store has made all of
/// them, one killed before it none of what follows.
inline void store_word(std::uint64_t& word, std::uint64_t value) noexcept {
    std::atomic_ref<std::uint64_t>(word).store(value, std::memory_order_release);
}

/// The header of a container's table block (a hash table's slots, a list's items follow it).
struct TableHeader {
    std::uint64_t capacity;  // slots
    std::uint64_t reserved[7];
};
inline constexpr std::size_t kTableHeader = sizeof(TableHeader);
static_assert(kTableHeader == 64, "a table's slots start on a cache line");

/// The change a container is making, recorded under its mutex (see the file comment).
struct Journal {
    enum Op : std::uint64_t {
        kNone = 0,
        kSwap,  // `word` := `committed`; frees `removed` once committed, `added` if not
        kDrop,  // `word` := `committed` unhooks the table `removed`: frees its entries, then the table
    };
    std::uint64_t op;         // written last when recording, cleared last when done
    std::uint64_t word;       // heap offset of the commit word
    std::uint64_t committed;  // what the commit word holds once the change is made
    std::uint64_t added;      // block the change brings in (heap offset, 0 for none)
    std::uint64_t added_generation;
    std::uint64_t removed;  // block the change takes out
    std::uint64_t removed_generation;
    std::uint64_t stride;  // kDrop: words per slot of the removed table (the entry is a slot's first word)
    std::uint64_t count;   // kDrop: slots of the removed table that may hold entries
};
static_assert(std::is_trivially_copyable_v<Journal> && std::is_standard_layout_v<Journal>,
              "a Journal lives in shared memory: no pointers, no destructor");

/// Frees the block at `offset` if it still carries `generation` (it was not freed, or freed and reused, since).
inline void free_if_current(std::uint64_t offset, std::uint64_t generation) noexcept {
    SharedHeap& heap = SharedHeap::instance();
    if (offset != 0 && heap.generation_of(offset) == generation) heap.free(offset);
}

inline std::uint64_t* table_slots(std::uint64_t table) noexcept {
    return reinterpret_cast<std::uint64_t*>(SharedHeap::instance().address(table) + kTableHeader);
}

/// Slot values that are not entries: an empty slot, and a hash table's erased slot (a tombstone).
inline constexpr std::uint64_t kEmptySlot = 0;
inline constexpr std::uint64_t kErasedSlot = 1;

/// Records a change before its commit. Call with the container's mutex held, the journal clear.
inline void record(Journal& j, Journal::Op op, std::uint64_t& word, std::uint64_t committed, std::uint64_t added,
                   std::uint64_t removed, std::uint64_t stride = 0, std::uint64_t count = 0) noexcept {
    SharedHeap& heap = SharedHeap::instance();
    j.word = heap.offset_of(&word);
    j.committed = committed;
    j.added = added;
    j.added_generation = added != 0 ? heap.generation_of(added) : 0;
    j.removed = removed;
    j.removed_generation = removed != 0 ? heap.generation_of(removed) : 0;
    j.stride = stride;
    j.count = count;
    store_word(j.op, op);
}

/// After the commit: frees what the change took out, then clears the record. Also finishes a dead holder's
/// committed change (recover()): each entry of a dropped table is unhooked from its slot before it is freed, so a
/// slot that still names one names a live entry.
inline void finish(Journal& j) noexcept {
    if (j.op == Journal::kDrop && j.removed != 0 &&
        SharedHeap::instance().generation_of(j.removed) == j.removed_generation) {
        std::uint64_t* slots = table_slots(j.removed);
        for (std::uint64_t i = 0; i < j.count; ++i) {
            std::uint64_t& slot = slots[i * j.stride];
            const std::uint64_t entry = load_word(slot);
            if (entry == kEmptySlot || entry == kErasedSlot) continue;
            store_word(slot, kEmptySlot);
            SharedHeap::instance().free(entry);
        }
    }
    free_if_current(j.removed, j.removed_generation);
    store_word(j.op, Journal::kNone);
}

/// Makes a change: records it, commits it with one store, frees what it took out. Mutex held.
inline void swap_word(Journal& j, std::uint64_t& word, std::uint64_t value, std::uint64_t added,
                      std::uint64_t removed) noexcept {
    record(j, Journal::kSwap, word, value, added, removed);
    store_word(word, value);
    finish(j);
}

/// Completes (committed) or undoes (not committed) the change a holder that died left recorded. Call after taking
/// the container's mutex over; the container then recounts what it derives from its structure.
inline void recover(Journal& j) noexcept {
    if (load_word(j.op) == Journal::kNone) return;
    auto& word = *reinterpret_cast<std::uint64_t*>(SharedHeap::instance().address(j.word));
    if (load_word(word) == j.committed) {
        finish(j);
    } else {
        free_if_current(j.added, j.added_generation);
        store_word(j.op, Journal::kNone);
    }
}

/// Holds the robust mutex of a structure whose changes go through a Journal (a shared dict, list or pipe); a locker
/// that took it over from a dead holder first repairs the structure (`Repair(state)`: the journal's change finished
/// or undone, derived counts recounted).
template <class State, void (*Repair)(State&) noexcept>
class ContainerLock {
public:
    explicit ContainerLock(State& state) : state_(state) {
        state_.mutex.lock();
        if (state_.mutex.recovered.load() != 0) {
            Repair(state_);
            state_.mutex.recovered.store(0);
        }
    }
    ~ContainerLock() { state_.mutex.unlock(); }
    ContainerLock(const ContainerLock&) = delete;
    ContainerLock& operator=(const ContainerLock&) = delete;

private:
    State& state_;
};

}  // namespace procpool::detail
