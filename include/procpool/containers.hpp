// procpool: a dict and a list shared between processes, SharedDict<K, V> and SharedList<T>: Python's
// Manager().dict() and Manager().list() without the proxies.
//
// A Manager keeps the data in a server process and every operation is a round trip to it. These containers live in
// procpool's shared heap instead, and every process that has a handle works on them directly, under the
// container's robust lock. Handles like the other shared objects: copies share one container, they pass to tasks
// as arguments or captures (made before or after the pool), and the container is freed with the last handle in the
// process that made it. Keys and values are stored encoded (serialize.hpp): what goes in is copied, what comes out
// is a copy.
//
// Crash consistency (what Python's Manager gets from its server process): a process killed at any instruction inside
// any operation leaves the container consistent. Every operation that completed is visible, the interrupted one is
// applied entirely or not at all, at most one heap block leaks, and the next user goes on. Each change commits with
// one word written last, recorded beforehand so that the next locker can finish or undo it (detail/shared_journal.hpp).
#pragma once

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>

#include "procpool/detail/container_tables.hpp"
#include "procpool/detail/shared_handle.hpp"
#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"

namespace procpool {

/// A dict shared between processes, like Python's Manager().dict(), for any K and V procpool can serialize.
///
/// Two keys are the same key when their encodings are the same bytes (for the built-in types that is `==`; a user
/// type's serialize() decides for it). Every member locks the dict for its duration (a robust, process-shared
/// mutex), so each is atomic and safe from any thread of any process; a member never waits for anything else. A
/// process killed inside a member leaves the dict consistent (see the file comment). Members throw std::bad_alloc
/// when the shared heap is exhausted, and what encoding or decoding a K or V throws (SerializationError).
template <class K, class V>
class SharedDict : public detail::SharedHandle<SharedDict<K, V>, detail::kDictObject> {
    using Handle = detail::SharedHandle<SharedDict<K, V>, detail::kDictObject>;
    using Handle::ref_;
    static_assert(Serializable<K> && Serializable<V>,
                  "procpool: SharedDict<K, V> needs keys and values procpool can serialize (arithmetic types, "
                  "std::string, standard containers, trivially copyable structs, types with a serialize() member)");

public:
    using key_type = K;
    using mapped_type = V;

    /// An empty dict. Throws std::bad_alloc when the shared heap is exhausted.
    SharedDict() : Handle(detail::SharedRef::create(sizeof(detail::DictState), detail::kDictObject, &destroy)) {
        auto* s = new (ref_.address()) detail::DictState();
        s->mutex.init(false);
    }

    /// d[key] = value: inserts or replaces.
    void set(const K& key, const V& value) const {
        detail::Buffer encoded;
        const std::size_t key_bytes = encode_key(encoded, key).size();
        detail::encode_into(encoded, value);
        const detail::Bytes k = encoded.view().first(key_bytes);
        const std::uint64_t hash = detail::hash_bytes(k.data(), k.size());
        // The entry is made before taking the lock, so the lock is held only to link it in.
        const std::uint64_t entry = detail::DictTable::make_entry(hash, k, encoded.view().subspan(key_bytes));
        try {
            Guard guard(state());
            detail::DictTable::put(state(), detail::DictTable::find(state(), hash, k), entry, k);
        } catch (...) {
            detail::SharedHeap::instance().free(entry);
            throw;
        }
    }

    /// A copy of the value for `key`, nothing if there is none.
    [[nodiscard]] std::optional<V> get(const K& key) const {
        detail::Buffer encoded;
        const detail::Bytes k = encode_key(encoded, key);
        Guard guard(state());
        const auto probe = detail::DictTable::find(state(), detail::hash_bytes(k.data(), k.size()), k);
        if (probe.found == detail::DictTable::kNone) return std::nullopt;
        return detail::decode_bytes<V>(detail::DictTable::value_of(slot_entry(probe.found)));
    }
    /// A copy of the value for `key`, `fallback` if there is none (Python's d.get(key, fallback)).
    [[nodiscard]] V get(const K& key, V fallback) const {
        std::optional<V> value = get(key);
        return value ? std::move(*value) : std::move(fallback);
    }
    /// Python's `key in d`.
    [[nodiscard]] bool contains(const K& key) const {
        detail::Buffer encoded;
        const detail::Bytes k = encode_key(encoded, key);
        Guard guard(state());
        return detail::DictTable::find(state(), detail::hash_bytes(k.data(), k.size()), k).found !=
               detail::DictTable::kNone;
    }
    /// Removes `key`; false if it was not there.
    bool erase(const K& key) const {
        detail::Buffer encoded;
        const detail::Bytes k = encode_key(encoded, key);
        Guard guard(state());
        const auto probe = detail::DictTable::find(state(), detail::hash_bytes(k.data(), k.size()), k);
        if (probe.found == detail::DictTable::kNone) return false;
        detail::DictTable::erase(state(), probe.found);
        return true;
    }
    /// Number of keys.
    [[nodiscard]] std::size_t size() const {
        Guard guard(state());
        return static_cast<std::size_t>(state().live);
    }
    [[nodiscard]] bool empty() const { return size() == 0; }
    /// Removes every key. Never throws std::bad_alloc.
    void clear() const {
        Guard guard(state());
        detail::DictTable::clear(state());
    }
    /// A consistent snapshot: every (key, value) at one moment, in insertion order (as a Python dict: a key that is
    /// set again keeps its place, one erased and set again goes last).
    [[nodiscard]] std::vector<std::pair<K, V>> items() const {
        std::vector<std::pair<std::uint64_t, std::pair<K, V>>> ordered;
        {
            Guard guard(state());
            ordered.reserve(static_cast<std::size_t>(state().live));
            detail::DictTable::for_each(state(), [&](std::uint64_t e) {
                ordered.emplace_back(detail::DictTable::entry(e)->order,
                                     std::pair<K, V>(detail::decode_bytes<K>(detail::DictTable::key_of(e)),
                                                     detail::decode_bytes<V>(detail::DictTable::value_of(e))));
            });
        }
        std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        std::vector<std::pair<K, V>> result;
        result.reserve(ordered.size());
        for (auto& item : ordered) result.push_back(std::move(item.second));
        return result;
    }

    /// Runs `fn(V&)` on the value for `key` (a copy of `initial` when the key is missing) and stores the result,
    /// atomically: no other member of this dict runs in between, in any process. Returns the new value. The C++
    /// answer to Python's racy `d[k] += 1`: `d.update(k, [](long& v) { ++v; })`.
    /// `fn` runs with the dict locked: keep it short, and do not use this dict in it (PoolStateError). If `fn`
    /// throws, or its process dies in it, nothing changes.
    template <class F>
    V update(const K& key, F fn, V initial = V{}) const {
        detail::Buffer encoded;
        const detail::Bytes k = encode_key(encoded, key);
        const std::size_t key_bytes = k.size();
        const std::uint64_t hash = detail::hash_bytes(k.data(), k.size());
        Guard guard(state());
        auto probe = detail::DictTable::find(state(), hash, k);
        V value = probe.found != detail::DictTable::kNone
                      ? detail::decode_bytes<V>(detail::DictTable::value_of(slot_entry(probe.found)))
                      : std::move(initial);
        fn(value);
        detail::encode_into(encoded, value);  // (may move the buffer: `k` is read again below)
        const detail::Bytes both = encoded.view();
        const std::uint64_t entry = detail::DictTable::make_entry(hash, both.first(key_bytes), both.subspan(key_bytes));
        try {
            detail::DictTable::put(state(), probe, entry, both.first(key_bytes));
        } catch (...) {
            detail::SharedHeap::instance().free(entry);
            throw;
        }
        return value;
    }

private:
    friend Handle;
    using Guard = detail::ContainerLock<detail::DictState, &detail::DictTable::repair>;

    explicit SharedDict(detail::SharedRef ref) : Handle(std::move(ref)) {}
    [[nodiscard]] detail::DictState& state() const noexcept { return this->template object<detail::DictState>(); }
    [[nodiscard]] std::uint64_t slot_entry(std::uint64_t index) const noexcept {
        return detail::load_word(detail::DictTable::slots(state().table)[index].entry);
    }
    static detail::Bytes encode_key(detail::Buffer& out, const K& key) {
        detail::encode_into(out, key);
        return out.view();
    }
    static void destroy(void* state) { detail::DictTable::destroy(*static_cast<detail::DictState*>(state)); }
};

/// A list shared between processes, like Python's Manager().list(), for any T procpool can serialize.
///
/// Every member locks the list for its duration (a robust, process-shared mutex), so each is atomic and safe from
/// any thread of any process. A process killed inside a member leaves the list consistent (see the file comment).
/// Members throw std::bad_alloc when the shared heap is exhausted, and what encoding or decoding a T throws.
template <class T>
class SharedList : public detail::SharedHandle<SharedList<T>, detail::kListObject> {
    using Handle = detail::SharedHandle<SharedList<T>, detail::kListObject>;
    using Handle::ref_;

    static_assert(Serializable<T>,
                  "procpool: SharedList<T> needs a T procpool can serialize (arithmetic types, std::string, "
                  "standard containers, trivially copyable structs, types with a serialize() member)");

public:
    using value_type = T;

    /// An empty list. Throws std::bad_alloc when the shared heap is exhausted.
    SharedList() : Handle(detail::SharedRef::create(sizeof(detail::ListState), detail::kListObject, &destroy)) {
        auto* s = new (ref_.address()) detail::ListState();
        s->mutex.init(false);
    }

    /// Adds `value` at the end.
    void append(const T& value) const {
        const std::uint64_t entry = make_entry(value);
        try {
            Guard guard(state());
            detail::ListTable::append(state(), entry);
        } catch (...) {
            detail::SharedHeap::instance().free(entry);
            throw;
        }
    }
    /// A copy of item `index`; throws std::out_of_range past the end.
    [[nodiscard]] T get(std::size_t index) const {
        Guard guard(state());
        check(index);
        return detail::decode_bytes<T>(
            detail::ListTable::value_of(detail::load_word(detail::ListTable::item(state(), index))));
    }
    /// Replaces item `index`; throws std::out_of_range past the end.
    void set(std::size_t index, const T& value) const {
        const std::uint64_t entry = make_entry(value);
        try {
            Guard guard(state());
            check(index);
            detail::ListTable::set(state(), index, entry);
        } catch (...) {
            detail::SharedHeap::instance().free(entry);
            throw;
        }
    }
    /// Number of items.
    [[nodiscard]] std::size_t size() const {
        Guard guard(state());
        return static_cast<std::size_t>(detail::load_word(state().size));
    }
    [[nodiscard]] bool empty() const { return size() == 0; }
    /// A consistent snapshot of every item, in order.
    [[nodiscard]] std::vector<T> items() const {
        std::vector<T> result;
        Guard guard(state());
        const std::uint64_t size = detail::load_word(state().size);
        result.reserve(static_cast<std::size_t>(size));
        for (std::uint64_t i = 0; i < size; ++i) {
            result.push_back(detail::decode_bytes<T>(
                detail::ListTable::value_of(detail::load_word(detail::ListTable::item(state(), i)))));
        }
        return result;
    }
    /// Removes every item. Never throws std::bad_alloc.
    void clear() const {
        Guard guard(state());
        detail::ListTable::clear(state());
    }

private:
    friend Handle;
    using Guard = detail::ContainerLock<detail::ListState, &detail::ListTable::repair>;

    explicit SharedList(detail::SharedRef ref) : Handle(std::move(ref)) {}
    [[nodiscard]] detail::ListState& state() const noexcept { return this->template object<detail::ListState>(); }
    static std::uint64_t make_entry(const T& value) {
        detail::Buffer encoded;
        detail::encode_into(encoded, value);
        return detail::ListTable::make_entry(encoded.view());
    }
    void check(std::size_t index) const {
        const std::uint64_t size = detail::load_word(state().size);
        if (index >= size) {
            throw std::out_of_range("procpool: SharedList index " + std::to_string(index) + " on a list of " +
                                    std::to_string(size) + " items");
        }
    }
    static void destroy(void* state) { detail::ListTable::destroy(*static_cast<detail::ListState*>(state)); }
};

}  // namespace procpool
