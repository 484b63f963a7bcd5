// procpool internals: what every shared-object handle is made of.
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <utility>

#include "procpool/detail/process.hpp"
#include "procpool/detail/shared_heap.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

enum ObjectKind : std::uint32_t {
    kLockObject = 1,
    kRLockObject,
    kSemaphoreObject,
    kEventObject,
    kConditionObject,
    kBarrierObject,
    kArrayObject,
    kQueueObject,
    kQueueMessage,
    kExceptionTable,  // the exception registry's table (detail/exception_registry.hpp)
    // containers.hpp, pipe.hpp, managed_segment.hpp (numbered apart, so the lists above can grow)
    kDictObject = 32,
    kDictTable,
    kDictEntry,
    kListObject,
    kListTable,
    kListEntry,
    kPipeObject,
    kPipeMessage,
    kSegmentObject,
};

/// A handle's reference to an object in the shared heap: the block, its generation (a stale handle is caught when
/// decoded), where inside the block this handle's object is (a SharedArray's lock lives inside the array's block),
/// and, in the process that made the block, its Ownership.
///
/// Fork-aware: copies and destruction count handles only in the owning process. A handle that reached another
/// process (decoded there, or copied byte for byte inside a lambda's captures, or inherited by fork) borrows the
/// object: copying or destroying it there touches nothing but the handle itself. So copying is noexcept, and a
/// lambda capturing handles can be sent to a worker byte for byte.
class SharedRef {
public:
    SharedRef() noexcept = default;
    SharedRef(const SharedRef& other) noexcept
        : address_(other.address_), block_(other.block_), generation_(other.generation_), inner_(other.inner_),
          ownership_(other.ownership_), kind_(other.kind_), owner_fork_(other.owner_fork_) {
        if (owned_here()) ownership_->handles.fetch_add(1, std::memory_order_relaxed);
    }
    // A move is a copy: the source stays a valid reference, and the reference count is what tracks both.
    SharedRef(SharedRef&& other) noexcept : SharedRef(other) {}  // NOLINT(performance-move-constructor-init)
    SharedRef& operator=(const SharedRef& other) noexcept {
        if (this != &other) {
            SharedRef copy(other);
            swap(copy);
        }
        return *this;
    }
    SharedRef& operator=(SharedRef&& other) noexcept { return *this = other; }
    ~SharedRef() {
        if (owned_here()) OwnerRegistry::instance().release(ownership_);
    }

    /// Makes a new zeroed block of `bytes` owned by this process; `destroy` runs on it before it is freed.
    static SharedRef create(std::size_t bytes, ObjectKind kind, void (*destroy)(void*) = nullptr) {
        SharedHeap& heap = SharedHeap::instance();
        const std::uint64_t offset = heap.allocate(bytes, kind);
        auto* ownership = new (std::nothrow) Ownership();
        if (ownership == nullptr) {
            heap.free(offset);
            throw std::bad_alloc();
        }
        ownership->offset = offset;
        ownership->generation = heap.generation_of(offset);
        ownership->destroy = destroy;
        SharedRef ref;
        ref.address_ = heap.address(offset);
        ref.block_ = offset;
        ref.generation_ = ownership->generation;
        ref.kind_ = kind;
        ref.ownership_ = ownership;
        ref.owner_fork_ = fork_generation();
        OwnerRegistry::instance().add(ownership);
        return ref;
    }

    /// A reference to an object `inner` bytes inside the same block (it keeps the whole block alive).
    [[nodiscard]] SharedRef inner(std::uint64_t inner) const noexcept {
        SharedRef ref = *this;
        ref.inner_ = inner;
        return ref;
    }

    [[nodiscard]] std::byte* address() const noexcept { return address_ + inner_; }
    [[nodiscard]] bool valid() const noexcept { return address_ != nullptr; }
    /// True in the process that made the object (its handles there keep it alive).
    [[nodiscard]] bool owned_here() const noexcept { return ownership_ != nullptr && owner_fork_ == fork_generation(); }

    void encode(OutputArchive& ar) const {
        if (!valid()) throw SerializationError("procpool: cannot send an empty shared-object handle");
        const std::uint64_t words[3] = {block_, generation_, inner_};
        ar.write_bytes(words, sizeof words);
        ar.write_bytes(&kind_, sizeof kind_);
        if (owned_here()) ar.keep_alive(std::make_shared<SharedRef>(*this));  // until the task has run
    }

    /// Decodes and checks a reference; it owns the object again if this process is the one that made it.
    static SharedRef decode(InputArchive& ar, std::uint32_t expected_kind) {
        SharedRef ref;
        std::uint64_t words[3];
        ar.read_bytes(words, sizeof words);
        ar.read_bytes(&ref.kind_, sizeof ref.kind_);
        ref.block_ = words[0];
        ref.generation_ = words[1];
        ref.inner_ = words[2];
        if (ref.inner_ == 0 && ref.kind_ != expected_kind) {
            throw SerializationError("procpool: a shared-object handle of another type");
        }
        ref.address_ = static_cast<std::byte*>(SharedHeap::instance().resolve(ref.block_, ref.generation_, ref.kind_));
        if (Ownership* ownership = OwnerRegistry::instance().acquire(ref.block_, ref.generation_)) {
            ref.ownership_ = ownership;
            ref.owner_fork_ = fork_generation();
        }
        return ref;
    }

    friend bool operator==(const SharedRef& a, const SharedRef& b) noexcept {
        return a.block_ == b.block_ && a.generation_ == b.generation_ && a.inner_ == b.inner_;
    }

private:
    void swap(SharedRef& other) noexcept {
        std::swap(address_, other.address_);
        std::swap(block_, other.block_);
        std::swap(generation_, other.generation_);
        std::swap(inner_, other.inner_);
        std::swap(kind_, other.kind_);
        std::swap(ownership_, other.ownership_);
        std::swap(owner_fork_, other.owner_fork_);
    }

    // No padding (checked below): a lambda capturing a handle is copied to the worker byte for byte, and the stack
    // check (detail/stack_check.hpp) reads each of its 8-byte words. A padding word holds whatever the stack held
    // there before, and half a stale stack address beside a small kind_ was taken for a capture by reference.
    std::byte* address_ = nullptr;
    std::uint64_t block_ = 0;
    std::uint64_t generation_ = 0;
    std::uint64_t inner_ = 0;
    Ownership* ownership_ = nullptr;
    std::uint32_t kind_ = 0;
    unsigned owner_fork_ = 0;
};
static_assert(sizeof(SharedRef) ==
                  2 * sizeof(void*) + 3 * sizeof(std::uint64_t) + sizeof(std::uint32_t) + sizeof(unsigned),
              "SharedRef has no padding: the stack check reads every byte of a captured handle");

/// The handle protocol every shared object follows (CRTP): it travels as a reference to its block (encoded by
/// SharedRef, never copied), comes back as a Self bound to the same object, and compares equal to the handles of
/// that object. Self befriends this base (its constructor from a SharedRef is private) and reaches its state through
/// object<State>().
template <class Self, ObjectKind Kind>
class SharedHandle {
public:
    /// Marks Self as a shared-object handle for serialize.hpp.
    using procpool_handle_tag = void;
    void procpool_encode(OutputArchive& ar) const { ref_.encode(ar); }
    /// Throws SerializationError for a handle to another type of object or to one that was freed.
    static Self procpool_decode(InputArchive& ar) { return Self(SharedRef::decode(ar, Kind)); }
    /// Handles are equal when they refer to the same object.
    friend bool operator==(const Self& a, const Self& b) noexcept {
        return static_cast<const SharedHandle&>(a).ref_ == static_cast<const SharedHandle&>(b).ref_;
    }

protected:
    explicit SharedHandle(SharedRef ref) noexcept : ref_(std::move(ref)) {}
    /// The object's shared state: a State at the handle's address.
    template <class State>
    [[nodiscard]] State& object() const noexcept {
        return *std::launder(reinterpret_cast<State*>(ref_.address()));
    }

    SharedRef ref_;
};

}  // namespace procpool::detail
