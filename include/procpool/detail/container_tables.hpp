// procpool internals: the shared-memory side of containers.hpp: SharedDict's hash table (DictTable) and
// SharedList's array (ListTable) in the shared heap, each change committed with one word through the shared journal,
// and the lock that repairs a container taken over from a dead holder (ContainerLock). Part of procpool/containers.hpp;
// its file comment says what crash consistency means here.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/robust_mutex.hpp"
#include "procpool/detail/shared_handle.hpp"
#include "procpool/detail/shared_heap.hpp"
#include "procpool/detail/shared_journal.hpp"
#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

/// A 64-bit hash of encoded key bytes (8 bytes per step, splitmix64's finalizer).
inline std::uint64_t hash_bytes(const std::byte* data, std::size_t size) noexcept {
    auto mix = [](std::uint64_t x) {
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebULL;
        return x ^ (x >> 31);
    };
    std::uint64_t h = 0x9e3779b97f4a7c15ULL ^ size;
    std::size_t at = 0;
    for (; at + 8 <= size; at += 8) {
        std::uint64_t word = 0;
        std::memcpy(&word, data + at, 8);
        h = std::rotl(h ^ mix(word), 27) * 0x9e3779b97f4a7c15ULL;
    }
    if (at < size) {
        std::uint64_t word = 0;
        std::memcpy(&word, data + at, size - at);
        h = std::rotl(h ^ mix(word ^ 0xff), 27) * 0x9e3779b97f4a7c15ULL;
    }
    return mix(h);
}

/// What an encoded key or value occupies: a view of encoded bytes.
using Bytes = std::span<const std::byte>;

// ---- SharedDict's table ------------------------------------------------------------------------------------------
//
// An open-addressing hash table (linear probing) of 16-byte slots {entry, hash}, in its own heap block after a
// TableHeader. An entry is a heap block: DictEntry, the encoded key, the encoded value; never changed once a slot
// names it. A slot's entry word is its commit word: 0 empty, 1 erased (a tombstone), else the entry's offset.
// Inserting writes the slot's hash and then its entry; replacing a value swaps the entry; erasing writes 1. When
// entries and tombstones fill 3/4 of the slots, the next insertion builds a new table (at most half full, no
// tombstones) and swaps the state's table word; clear() swaps in no table at all (kDrop).

struct DictEntry {
    std::uint64_t hash;
    std::uint64_t key_bytes;
    std::uint64_t value_bytes;
    std::uint64_t order;  // insertion order: items() lists entries by it, as a Python dict does
    // key bytes, then value bytes
};

struct DictSlot {
    std::uint64_t entry;
    std::uint64_t hash;
};
static_assert(sizeof(DictSlot) == 2 * sizeof(std::uint64_t), "a slot's entry word is every second word");

struct DictState {
    RobustMutex mutex;
    std::uint64_t table;       // commit word: offset of the table block, 0 = none yet (or cleared)
    std::uint64_t live;        // entries; recounted by a locker that took the mutex over
    std::uint64_t tombstones;  // erased slots; recounted likewise
    std::uint64_t next_order;  // order of the next new key (moved past every entry's before its commit)
    Journal journal;
};
static_assert(std::is_standard_layout_v<DictState> && std::is_trivially_destructible_v<DictState>,
              "a dict's state lives in shared memory: no pointers, no destructor");

class DictTable {
public:
    static constexpr std::uint64_t kNone = ~std::uint64_t{0};
    static constexpr std::uint64_t kMinCapacity = 16;

    /// Where a key is (`found`), or where it would go (`vacant`: the first tombstone or empty slot on its path).
    struct Probe {
        std::uint64_t found = kNone;
        std::uint64_t vacant = kNone;
    };

    static DictEntry* entry(std::uint64_t offset) noexcept {
        return std::launder(reinterpret_cast<DictEntry*>(SharedHeap::instance().address(offset)));
    }
    static Bytes key_of(std::uint64_t offset) noexcept {
        const DictEntry* e = entry(offset);
        return {reinterpret_cast<const std::byte*>(e) + sizeof(DictEntry), e->key_bytes};
    }
    static Bytes value_of(std::uint64_t offset) noexcept {
        const DictEntry* e = entry(offset);
        return {reinterpret_cast<const std::byte*>(e) + sizeof(DictEntry) + e->key_bytes, e->value_bytes};
    }
    static DictSlot* slots(std::uint64_t table) noexcept { return reinterpret_cast<DictSlot*>(table_slots(table)); }
    static std::uint64_t capacity(std::uint64_t table) noexcept {
        return table == 0 ? 0 : reinterpret_cast<TableHeader*>(SharedHeap::instance().address(table))->capacity;
    }

    /// Allocates an entry holding `key` and `value` (encoded). Throws std::bad_alloc.
    static std::uint64_t make_entry(std::uint64_t hash, Bytes key, Bytes value) {
        const std::uint64_t offset = SharedHeap::instance().allocate(sizeof(DictEntry) + key.size() + value.size(),
                                                                     kDictEntry);
        DictEntry* e = entry(offset);
        e->hash = hash;
        e->key_bytes = key.size();
        e->value_bytes = value.size();
        auto* bytes = reinterpret_cast<std::byte*>(e) + sizeof(DictEntry);
        if (!key.empty()) std::memcpy(bytes, key.data(), key.size());
        if (!value.empty()) std::memcpy(bytes + key.size(), value.data(), value.size());
        return offset;
    }

    static Probe find(DictState& s, std::uint64_t hash, Bytes key) noexcept {
        Probe probe;
        const std::uint64_t table = load_word(s.table);
        const std::uint64_t cap = capacity(table);
        if (cap == 0) return probe;
        DictSlot* slot = slots(table);
        for (std::uint64_t i = hash & (cap - 1), seen = 0; seen < cap; i = (i + 1) & (cap - 1), ++seen) {
            const std::uint64_t e = load_word(slot[i].entry);
            if (e == kEmptySlot) {
                if (probe.vacant == kNone) probe.vacant = i;
                return probe;
            }
            if (e == kErasedSlot) {
                if (probe.vacant == kNone) probe.vacant = i;
            } else if (slot[i].hash == hash && equal(key_of(e), key)) {
                probe.found = i;
                return probe;
            }
        }
        return probe;
    }

    /// Puts `entry` (made by make_entry for `key`) in the table: it replaces the key's entry, which is freed, or
    /// becomes a new key. `probe` is find()'s answer for the key. Mutex held. Throws std::bad_alloc when the table
    /// must grow and cannot (then nothing changed, and the caller still owns `entry`).
    static void put(DictState& s, Probe probe, std::uint64_t entry_offset, Bytes key) {
        DictEntry* e = entry(entry_offset);
        if (probe.found != kNone) {
            DictSlot& slot = slots(s.table)[probe.found];
            const std::uint64_t old = load_word(slot.entry);
            e->order = entry(old)->order;  // a new value keeps the key's place, as in a Python dict
            swap_word(s.journal, slot.entry, entry_offset, entry_offset, old);
            return;
        }
        const std::uint64_t cap = capacity(s.table);
        if ((s.live + s.tombstones + 1) * 4 > cap * 3 || probe.vacant == kNone) {
            rebuild(s, std::max(kMinCapacity, std::bit_ceil((s.live + 1) * 2)));
            probe = find(s, e->hash, key);
        }
        DictSlot& slot = slots(s.table)[probe.vacant];
        const bool was_erased = load_word(slot.entry) == kErasedSlot;
        e->order = s.next_order;
        store_word(s.next_order, s.next_order + 1);  // before the commit: every committed entry's order is below it
        store_word(slot.hash, e->hash);              // not a commit: read only where the entry word names an entry
        swap_word(s.journal, slot.entry, entry_offset, entry_offset, 0);
        ++s.live;
        if (was_erased) --s.tombstones;
    }

    /// Erases the entry in slot `index` (a find() answer). Mutex held.
    static void erase(DictState& s, std::uint64_t index) noexcept {
        DictSlot& slot = slots(s.table)[index];
        swap_word(s.journal, slot.entry, kErasedSlot, 0, load_word(slot.entry));
        --s.live;
        ++s.tombstones;
    }

    /// Drops the table and every entry. Mutex held.
    static void clear(DictState& s) noexcept {
        const std::uint64_t table = load_word(s.table);
        if (table == 0) return;
        record(s.journal, Journal::kDrop, s.table, 0, 0, table, 2, capacity(table));
        store_word(s.table, 0);
        s.live = 0;
        s.tombstones = 0;
        finish(s.journal);
    }

    /// Calls `visit(entry offset)` for each entry. Mutex held.
    template <class Visit>
    static void for_each(DictState& s, Visit&& visit) {
        const std::uint64_t table = load_word(s.table);
        DictSlot* slot = table != 0 ? slots(table) : nullptr;
        for (std::uint64_t i = 0, cap = capacity(table); i < cap; ++i) {
            const std::uint64_t e = load_word(slot[i].entry);
            if (e != kEmptySlot && e != kErasedSlot) visit(e);
        }
    }

    /// The repair a locker makes after taking the mutex over from a dead holder.
    static void repair(DictState& s) noexcept {
        recover(s.journal);
        std::uint64_t live = 0;
        std::uint64_t erased = 0;
        std::uint64_t next_order = s.next_order;
        const std::uint64_t table = load_word(s.table);
        DictSlot* slot = table != 0 ? slots(table) : nullptr;
        for (std::uint64_t i = 0, cap = capacity(table); i < cap; ++i) {
            const std::uint64_t e = load_word(slot[i].entry);
            if (e == kErasedSlot) {
                ++erased;
            } else if (e != kEmptySlot) {
                ++live;
                next_order = std::max(next_order, entry(e)->order + 1);
            }
        }
        s.live = live;
        s.tombstones = erased;
        s.next_order = next_order;
    }

    /// Frees every entry and the table (the owner's last handle is going; nobody uses the dict any more).
    static void destroy(DictState& s) noexcept {
        recover(s.journal);  // a change a dead holder left half-done
        clear(s);
    }

private:
    static bool equal(Bytes a, Bytes b) noexcept {
        return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
    }

    /// Moves every entry into a new table of `capacity` slots (no tombstones) and swaps it in. Mutex held.
    static void rebuild(DictState& s, std::uint64_t capacity) {
        SharedHeap& heap = SharedHeap::instance();
        const std::uint64_t fresh = heap.allocate(kTableHeader + capacity * sizeof(DictSlot), kDictTable);  // zeroed
        reinterpret_cast<TableHeader*>(heap.address(fresh))->capacity = capacity;
        DictSlot* to = slots(fresh);
        for_each(s, [&](std::uint64_t e) {
            const std::uint64_t hash = entry(e)->hash;
            std::uint64_t i = hash & (capacity - 1);
            while (to[i].entry != kEmptySlot) i = (i + 1) & (capacity - 1);
            to[i].hash = hash;
            to[i].entry = e;
        });
        swap_word(s.journal, s.table, fresh, fresh, load_word(s.table));
        s.tombstones = 0;
    }
};

// ---- SharedList's table ------------------------------------------------------------------------------------------
//
// An array of entry offsets in its own heap block after a TableHeader; an entry is a heap block: the encoded value's
// size, then its bytes. The state's length is the commit word of append() (the item is written past the end first);
// an item's slot is that of set(); the state's table word is that of growing (a copy twice as large) and clear().

struct ListEntry {
    std::uint64_t bytes;
    std::uint64_t reserved;
    // value bytes
};

struct ListState {
    RobustMutex mutex;
    std::uint64_t table;  // commit word of growing and clear(): offset of the table block, 0 = none
    std::uint64_t size;   // commit word of append()
    Journal journal;
};
static_assert(std::is_standard_layout_v<ListState> && std::is_trivially_destructible_v<ListState>,
              "a list's state lives in shared memory: no pointers, no destructor");

class ListTable {
public:
    static constexpr std::uint64_t kMinCapacity = 16;

    static Bytes value_of(std::uint64_t offset) noexcept {
        const auto* e = reinterpret_cast<const ListEntry*>(SharedHeap::instance().address(offset));
        return {reinterpret_cast<const std::byte*>(e) + sizeof(ListEntry), e->bytes};
    }
    static std::uint64_t capacity(std::uint64_t table) noexcept {
        return table == 0 ? 0 : reinterpret_cast<TableHeader*>(SharedHeap::instance().address(table))->capacity;
    }
    static std::uint64_t& item(ListState& s, std::uint64_t index) noexcept {
        return table_slots(load_word(s.table))[index];
    }

    /// Allocates an entry holding `value` (encoded). Throws std::bad_alloc.
    static std::uint64_t make_entry(Bytes value) {
        const std::uint64_t offset = SharedHeap::instance().allocate(sizeof(ListEntry) + value.size(), kListEntry);
        auto* e = reinterpret_cast<ListEntry*>(SharedHeap::instance().address(offset));
        e->bytes = value.size();
        if (!value.empty())
            std::memcpy(reinterpret_cast<std::byte*>(e) + sizeof(ListEntry), value.data(), value.size());
        return offset;
    }

    /// Appends `entry`. Mutex held. Throws std::bad_alloc when the table must grow and cannot (nothing changed).
    static void append(ListState& s, std::uint64_t entry) {
        const std::uint64_t size = load_word(s.size);
        const std::uint64_t cap = capacity(load_word(s.table));
        if (size == cap) grow(s, std::max(kMinCapacity, cap * 2));
        store_word(item(s, size), entry);  // past the end: not a commit
        swap_word(s.journal, s.size, size + 1, entry, 0);
    }

    /// Replaces item `index` (< size) by `entry`; the old entry is freed. Mutex held.
    static void set(ListState& s, std::uint64_t index, std::uint64_t entry) noexcept {
        std::uint64_t& slot = item(s, index);
        swap_word(s.journal, slot, entry, entry, load_word(slot));
    }

    /// Drops the table and every item. Mutex held.
    static void clear(ListState& s) noexcept {
        const std::uint64_t table = load_word(s.table);
        if (table == 0) return;
        record(s.journal, Journal::kDrop, s.table, 0, 0, table, 1, load_word(s.size));
        store_word(s.table, 0);
        store_word(s.size, 0);  // (a dead holder's: repair() sees no table and sets it)
        finish(s.journal);
    }

    static void repair(ListState& s) noexcept {
        recover(s.journal);
        if (load_word(s.table) == 0) store_word(s.size, 0);
    }

    static void destroy(ListState& s) noexcept {
        repair(s);
        clear(s);
    }

private:
    static void grow(ListState& s, std::uint64_t capacity) {
        SharedHeap& heap = SharedHeap::instance();
        const std::uint64_t fresh = heap.allocate(kTableHeader + capacity * sizeof(std::uint64_t), kListTable);
        reinterpret_cast<TableHeader*>(heap.address(fresh))->capacity = capacity;
        const std::uint64_t old = load_word(s.table);
        if (old != 0) std::memcpy(table_slots(fresh), table_slots(old), load_word(s.size) * sizeof(std::uint64_t));
        swap_word(s.journal, s.table, fresh, fresh, old);
    }
};

/// Encodes `value` into `out` (appending). Throws what encoding throws.
template <class T>
void encode_into(Buffer& out, const T& value) {
    OutputArchive ar(out);
    encode(ar, value);
}

template <class T>
T decode_bytes(Bytes bytes) {
    InputArchive ar(bytes);
    return decode_as<T>(ar);
}

}  // namespace procpool::detail
