// procpool: how values cross into and out of worker processes.
//
// Built in: arithmetic types, enums, std::string (any char type), std::vector, std::deque, std::list, std::array,
// std::pair, std::tuple, std::optional, std::variant, std::map, std::multimap, std::unordered_map, std::set,
// std::multiset, std::unordered_set, std::chrono::duration and time_point, std::filesystem::path, std::complex,
// std::bitset, trivially copyable structs (copied byte for byte), any nesting of these, and user types with a
// cereal-style member
//     template <class Archive> void serialize(Archive& ar) { ar(a, b, c); }
// or a free function `template <class Archive> void serialize(Archive& ar, T& value)` found by ADL.
// Raw pointers, std::string_view, std::span, smart pointers, std::function, streams, mutexes and other types fail
// to compile with a message naming the type and saying what to send instead.
//
// The encoding is the machine's native byte order and layout: both ends run the same program.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <initializer_list>
#include <list>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/demangle.hpp"
#include "procpool/detail/unsendable.hpp"
#include "procpool/errors.hpp"

namespace procpool {

class OutputArchive;
class InputArchive;

namespace detail {

template <class... Ts>
struct type_list {};

// ---- structure: which standard templates are containers of other values -----------------------------------------
// children<T>::type lists the element types procpool encodes for T; `composite` is false for leaves.
template <class T>
struct children {
    static constexpr bool composite = false;
    using type = type_list<>;
};
template <class T, class A>
struct children<std::vector<T, A>> {
    static constexpr bool composite = true;
    using type = type_list<T>;
};
template <class T, class A>
struct children<std::deque<T, A>> {
    static constexpr bool composite = true;
    using type = type_list<T>;
};
template <class T, class A>
struct children<std::list<T, A>> {
    static constexpr bool composite = true;
    using type = type_list<T>;
};
template <class T, std::size_t N>
struct children<std::array<T, N>> {
    static constexpr bool composite = true;
    using type = type_list<T>;
};
template <class A, class B>
struct children<std::pair<A, B>> {
    static constexpr bool composite = true;
    using type = type_list<A, B>;
};
template <class... Ts>
struct children<std::tuple<Ts...>> {
    static constexpr bool composite = true;
    using type = type_list<Ts...>;
};
template <class T>
struct children<std::optional<T>> {
    static constexpr bool composite = true;
    using type = type_list<T>;
};
template <class... Ts>
struct children<std::variant<Ts...>> {
    static constexpr bool composite = true;
    using type = type_list<Ts...>;
};
template <class K, class V, class C, class A>
struct children<std::map<K, V, C, A>> {
    static constexpr bool composite = true;
    using type = type_list<K, V>;
};
template <class K, class V, class C, class A>
struct children<std::multimap<K, V, C, A>> {
    static constexpr bool composite = true;
    using type = type_list<K, V>;
};
template <class K, class V, class H, class E, class A>
struct children<std::unordered_map<K, V, H, E, A>> {
    static constexpr bool composite = true;
    using type = type_list<K, V>;
};
template <class K, class C, class A>
struct children<std::set<K, C, A>> {
    static constexpr bool composite = true;
    using type = type_list<K>;
};
template <class K, class C, class A>
struct children<std::multiset<K, C, A>> {
    static constexpr bool composite = true;
    using type = type_list<K>;
};
template <class K, class H, class E, class A>
struct children<std::unordered_set<K, H, E, A>> {
    static constexpr bool composite = true;
    using type = type_list<K>;
};
template <class R, class P>
struct children<std::chrono::duration<R, P>> {
    static constexpr bool composite = true;
    using type = type_list<R>;
};

template <class T>
struct is_basic_string : std::false_type {};
template <class C, class Tr, class A>
struct is_basic_string<std::basic_string<C, Tr, A>> : std::true_type {};

template <class T>
struct is_std_array : std::false_type {};
template <class T, std::size_t N>
struct is_std_array<std::array<T, N>> : std::true_type {};

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

template <class T>
struct is_variant : std::false_type {};
template <class... Ts>
struct is_variant<std::variant<Ts...>> : std::true_type {};

template <class T>
struct is_duration : std::false_type {};
template <class R, class P>
struct is_duration<std::chrono::duration<R, P>> : std::true_type {};

template <class T>
struct is_tuple_like_std : std::false_type {};
template <class A, class B>
struct is_tuple_like_std<std::pair<A, B>> : std::true_type {};
template <class... Ts>
struct is_tuple_like_std<std::tuple<Ts...>> : std::true_type {};

template <class T>
concept map_like = requires {
    typename T::key_type;
    typename T::mapped_type;
}
&&children<T>::composite;
template <class T>
concept set_like = requires {
    typename T::key_type;
}
&&!map_like<T> && children<T>::composite;
template <class T>
concept sequence_like = children<T>::composite && !map_like<T> && !set_like<T> && !is_std_array<T>::value &&
                        !is_tuple_like_std<T>::value && !is_optional<T>::value && !is_variant<T>::value &&
                        !is_duration<T>::value;

// ---- leaves that must never travel -------------------------------------------------------------------------------
template <class T>
struct is_view_like : std::false_type {};
template <class C, class Tr>
struct is_view_like<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t E>
struct is_view_like<std::span<T, E>> : std::true_type {};
template <class T>
struct is_view_like<std::reference_wrapper<T>> : std::true_type {};
template <class T>
struct is_view_like<std::initializer_list<T>> : std::true_type {};

template <class T>
inline constexpr bool is_object_pointer_v = std::is_pointer_v<T> && !std::is_function_v<std::remove_pointer_t<T>>;

// ---- paths: std::filesystem::path (and path types shaped like it), sent as their native string -----------------
template <class T>
concept path_like = requires(const T& path, typename T::string_type native) {
    { path.native() } -> std::same_as<const typename T::string_type&>;
    T(std::move(native));
    path.filename();
    path.parent_path();
}
&&is_basic_string<typename T::string_type>::value;

// ---- user hooks --------------------------------------------------------------------------------------------------
template <class T>
concept has_member_serialize = requires(T& value, OutputArchive& out, InputArchive& in) {
    value.serialize(out);
    value.serialize(in);
};
template <class T>
concept has_free_serialize = requires(T& value, OutputArchive& out, InputArchive& in) {
    serialize(out, value);
    serialize(in, value);
};
/// procpool's own handle types (shared memory objects) encode themselves through this hook.
template <class T>
concept has_handle_codec = requires {
    typename T::procpool_handle_tag;
};

template <class T>
inline constexpr bool user_serializable_v = has_member_serialize<T> || has_free_serialize<T> || has_handle_codec<T>;

// ---- the classification ------------------------------------------------------------------------------------------
template <class T>
consteval bool bitwise();

template <class... Ts>
consteval bool all_bitwise(type_list<Ts...>) {
    return (bitwise<std::remove_cv_t<Ts>>() && ...);
}

/// True when a T is encoded as its raw bytes (and a contiguous run of T as one memcpy).
template <class T>
consteval bool bitwise() {
    if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) {
        return true;
    } else if constexpr (std::is_array_v<T>) {
        return bitwise<std::remove_cv_t<std::remove_all_extents_t<T>>>();
    } else if constexpr (is_std_array<T>::value || is_duration<T>::value) {
        return all_bitwise(typename children<T>::type{});
    } else if constexpr (children<T>::composite || is_basic_string<T>::value || is_view_like<T>::value ||
                         is_object_pointer_v<T> || user_serializable_v<T> || path_like<T>) {
        return false;
    } else {
        return std::is_trivially_copyable_v<T>;
    }
}

/// std::vector of bitwise elements (not bool): encoded as a size and one block copy.
template <class T>
struct is_bitwise_vector : std::false_type {};
template <class T, class A>
struct is_bitwise_vector<std::vector<T, A>> : std::bool_constant<bitwise<T>() && !std::is_same_v<T, bool>> {};

template <class T>
consteval bool serializable();

template <class... Ts>
consteval bool all_serializable(type_list<Ts...>) {
    return (serializable<std::remove_cv_t<Ts>>() && ...);
}

template <class T>
consteval bool serializable() {
    if constexpr (std::is_reference_v<T> || std::is_void_v<T>) {
        return false;
    } else if constexpr (is_view_like<T>::value || is_object_pointer_v<T>) {
        return false;
    } else if constexpr (is_basic_string<T>::value || user_serializable_v<T> || path_like<T>) {
        return true;
    } else if constexpr (children<T>::composite) {
        return all_serializable(typename children<T>::type{});
    } else {
        return bitwise<T>();
    }
}

template <template <class> class Leaf, class T>
consteval bool any_leaf();

template <template <class> class Leaf, class... Ts>
consteval bool any_leaf_of(type_list<Ts...>) {
    return (any_leaf<Leaf, std::remove_cv_t<Ts>>() || ...);
}

/// True when T or anything nested in it satisfies Leaf (used to pick the clearest compile-time message).
template <template <class> class Leaf, class T>
consteval bool any_leaf() {
    if constexpr (Leaf<T>::value) {
        return true;
    } else if constexpr (children<T>::composite) {
        return any_leaf_of<Leaf>(typename children<T>::type{});
    } else {
        return false;
    }
}

template <class T>
struct is_object_pointer : std::bool_constant<is_object_pointer_v<T>> {};

/// A leaf of type family `Family` (detail/unsendable.hpp) that procpool cannot serialize.
template <template <class> class Family>
struct unsendable {
    template <class T>
    struct leaf : std::bool_constant<!serializable<T>() && Family<T>::value> {};
};
template <template <class> class Family, class T>
consteval bool has_unsendable() {
    return any_leaf<unsendable<Family>::template leaf, T>();
}

/// A standard type that cannot travel, with a message naming it and saying what to send instead (nobody can add a
/// serialize() member to a std type). True when T has none.
template <class U>
consteval bool check_standard_types() {
    static_assert(!has_unsendable<is_smart_pointer, U>(),
                  "procpool: std::unique_ptr, std::shared_ptr and std::weak_ptr cannot be sent to another process: "
                  "the address they hold means nothing there. Send the value they point to (std::optional<T> for "
                  "one that may be empty), or keep shared data in a procpool::SharedArray or procpool::Queue.");
    static_assert(!has_unsendable<is_std_function, U>(),
                  "procpool: a std::function cannot be sent to another process: what it wraps is unknown. Send a "
                  "function pointer or a captureless lambda as the task, and the data it needs as arguments.");
    static_assert(!has_unsendable<is_atomic_like, U>(),
                  "procpool: a std::atomic cannot be copied, so it cannot be sent. Send its value (x.load()), or "
                  "share one counter between processes with procpool::SharedValue<T> and std::atomic_ref.");
    static_assert(!has_unsendable<is_stream, U>(),
                  "procpool: a stream (std::fstream, std::stringstream, std::cout...) cannot be sent to another "
                  "process. Send the file's path (std::filesystem::path) or its contents (std::string) instead.");
    static_assert(!has_unsendable<is_thread_sync, U>(),
                  "procpool: a std::mutex, a lock or a std::condition_variable works within one process only. Use "
                  "procpool::Lock, procpool::RLock or procpool::Condition, which are shared between processes and "
                  "are passed as handles.");
    static_assert(!has_unsendable<is_thread_like, U>(),
                  "procpool: a std::thread cannot be sent to another process. Start threads inside the task, or "
                  "let the pool's workers do the work.");
    static_assert(!has_unsendable<is_future_like, U>(),
                  "procpool: a std::future or std::promise connects threads of one process. Return the value from "
                  "the task: the pool's AsyncResult is the future of a task.");
    static_assert(!has_unsendable<is_any_like, U>(),
                  "procpool: a std::any cannot be sent: its type is only known at run time. Send a std::variant of "
                  "the types it may hold.");
    return !(has_unsendable<is_smart_pointer, U>() || has_unsendable<is_std_function, U>() ||
             has_unsendable<is_atomic_like, U>() || has_unsendable<is_stream, U>() ||
             has_unsendable<is_thread_sync, U>() || has_unsendable<is_thread_like, U>() ||
             has_unsendable<is_future_like, U>() || has_unsendable<is_any_like, U>());
}

/// Fails to compile, with a message saying what to do instead, unless T can be sent to a worker.
template <class T>
consteval bool check_serializable() {
    using U = std::remove_cvref_t<T>;
    static_assert(!any_leaf<is_object_pointer, U>(),
                  "procpool: raw pointers cannot be sent to another process. Send the value itself, a std::vector "
                  "or a std::string instead (or a shared object such as procpool::SharedArray).");
    static_assert(!any_leaf<is_view_like, U>(),
                  "procpool: std::string_view, std::span, std::initializer_list and std::reference_wrapper refer "
                  "to memory of the sending process. Send a std::string or a std::vector instead.");
    constexpr bool standard_ok = serializable<U>() || check_standard_types<U>();
    static_assert(serializable<U>() || any_leaf<is_object_pointer, U>() || any_leaf<is_view_like, U>() || !standard_ok,
                  "procpool: this type cannot be sent to a worker process. Use arithmetic types, enums, "
                  "std::string, standard containers, std::optional/std::variant/std::tuple/std::pair, trivially "
                  "copyable structs, or give the type a member "
                  "`template <class Archive> void serialize(Archive& ar) { ar(member1, member2); }`.");
    return serializable<U>();
}

/// Smallest number of bytes any encoding of T takes (0 when unknown); bounds sizes read from corrupt data.
template <class T>
consteval std::size_t min_encoded_size() {
    if constexpr (bitwise<T>()) {
        return sizeof(T);
    } else if constexpr (is_basic_string<T>::value || path_like<T> || sequence_like<T> || map_like<T> || set_like<T>) {
        return sizeof(std::uint64_t);
    } else if constexpr (is_optional<T>::value) {
        return 1;
    } else {
        return 0;
    }
}

}  // namespace detail

namespace detail {
/// The type a value is decoded into: a std::pair or std::tuple with const members (a std::map's value_type) is
/// decoded as the same tuple without the consts, which converts to the original.
template <class T>
struct decoded {
    using type = std::remove_cv_t<T>;
};
template <class A, class B>
struct decoded<std::pair<A, B>> {
    using type = std::pair<std::remove_cv_t<A>, std::remove_cv_t<B>>;
};
template <class... Ts>
struct decoded<std::tuple<Ts...>> {
    using type = std::tuple<std::remove_cv_t<Ts>...>;
};
template <class T>
using decoded_t = typename decoded<std::remove_cvref_t<T>>::type;
}  // namespace detail

/// True for every type procpool can send to a worker and back.
template <class T>
concept Serializable = detail::serializable<std::remove_cvref_t<T>>();

template <class T>
void encode(OutputArchive& ar, const T& value);
template <class T>
void decode(InputArchive& ar, T& value);

/// Writes values into a byte buffer. Passed to user `serialize(Archive&)` members: `ar(a, b, c)` encodes a, b, c.
class OutputArchive {
public:
    explicit OutputArchive(detail::Buffer& out, std::vector<std::shared_ptr<const void>>* keep_alive = nullptr) noexcept
        : out_(&out), keep_alive_(keep_alive) {}

    /// Keeps `object` alive as long as the encoded bytes are in use (shared-object handles register their owner
    /// here, so an object a queued task refers to cannot be freed before the task ran).
    void keep_alive(std::shared_ptr<const void> object) {
        if (keep_alive_ != nullptr && object) keep_alive_->push_back(std::move(object));
    }

    /// Encodes each value in order. Throws what a user serialize() throws.
    template <class... Ts>
    OutputArchive& operator()(const Ts&... values) {
        (encode(*this, values), ...);
        return *this;
    }

    /// Appends `n` raw bytes. An encoding is read next by another process: large runs into shared memory bypass
    /// the cache (Buffer::append_for_reader).
    void write_bytes(const void* bytes, std::size_t n) { out_->append_for_reader(bytes, n); }
    void write_size(std::size_t n) {
        const std::uint64_t wire = n;
        out_->append(&wire, sizeof wire);
    }
    [[nodiscard]] detail::Buffer& buffer() noexcept { return *out_; }

private:
    detail::Buffer* out_;
    std::vector<std::shared_ptr<const void>>* keep_alive_;
};

/// Reads values back from bytes. Passed to user `serialize(Archive&)` members: `ar(a, b, c)` decodes a, b, c.
/// Throws SerializationError when the bytes run out.
class InputArchive {
public:
    explicit InputArchive(std::span<const std::byte> bytes) noexcept
        : at_(bytes.data()), end_(bytes.data() + bytes.size()) {}

    template <class... Ts>
    InputArchive& operator()(Ts&... values) {
        (decode(*this, values), ...);
        return *this;
    }

    void read_bytes(void* into, std::size_t n) {
        require(n);
        if (n != 0) std::memcpy(into, at_, n);
        at_ += n;
    }
    /// Returns the next `n` bytes without copying them and moves past them.
    const std::byte* take(std::size_t n) {
        require(n);
        const std::byte* start = at_;
        at_ += n;
        return start;
    }
    /// Reads a container size and checks it against what is left (each element needs at least `min_each` bytes).
    std::size_t read_size(std::size_t min_each) {
        static_assert(sizeof(std::size_t) == sizeof(std::uint64_t), "sizes travel as 64-bit words");
        std::size_t n = 0;
        read_bytes(&n, sizeof n);
        if (min_each != 0 && n > remaining() / min_each) {
            throw SerializationError("procpool: corrupt data: a container claims " + std::to_string(n) +
                                     " elements but only " + std::to_string(remaining()) + " bytes are left");
        }
        return n;
    }
    [[nodiscard]] std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - at_); }
    [[nodiscard]] const std::byte* position() const noexcept { return at_; }

private:
    void require(std::size_t n) const {
        if (static_cast<std::size_t>(end_ - at_) < n) {
            throw SerializationError("procpool: message ended while decoding a value (truncated or corrupt data)");
        }
    }

    const std::byte* at_;
    const std::byte* end_;
};

namespace detail {

template <class T>
T decode_as(InputArchive& ar);

template <class Tuple, std::size_t... I>
Tuple decode_tuple_as(InputArchive& ar, std::index_sequence<I...>) {
    return Tuple{decode_as<std::tuple_element_t<I, Tuple>>(ar)...};  // braced: decoded left to right
}

/// Decodes and returns a T, also for types without a default constructor that are copied byte for byte
/// (lambda closures, for example), tuples of such, and shared-object handles.
template <class T>
T decode_as(InputArchive& ar) {
    if constexpr (has_handle_codec<T>) {
        return T::procpool_decode(ar);  // a handle is never default-constructed (that would make a new object)
    } else if constexpr (is_tuple_like_std<T>::value) {
        return decode_tuple_as<T>(ar, std::make_index_sequence<std::tuple_size_v<T>>{});
    } else if constexpr (std::is_default_constructible_v<T>) {
        T value;
        decode(ar, value);
        return value;
    } else {
        static_assert(bitwise<T>(),
                      "procpool: decoding this type needs a default constructor (or make it trivially copyable)");
        // Trivially copyable, so copying its bytes creates it (closures with const captures included).
        alignas(T) std::byte raw[sizeof(T)];
        ar.read_bytes(raw, sizeof raw);
        return *std::launder(reinterpret_cast<T*>(raw));
    }
}

template <class Tuple, std::size_t... I>
void encode_tuple(OutputArchive& ar, const Tuple& t, std::index_sequence<I...>) {
    (encode(ar, std::get<I>(t)), ...);
}
template <class Tuple, std::size_t... I>
void decode_tuple(InputArchive& ar, Tuple& t, std::index_sequence<I...>) {
    (decode(ar, std::get<I>(t)), ...);
}

/// Runs a user serialize() for a T. What it throws becomes SerializationError naming T and the original exception
/// (a SerializationError, from a nested value or thrown on purpose, passes as it is; so does std::bad_alloc), so a
/// value that cannot travel is told apart from a task's own failure, as Python's MaybeEncodingError does.
template <class T, class Call>
void run_user_serialize(const char* direction, Call&& call) {
    try {
        call();
    } catch (const SerializationError&) {
        throw;
    } catch (const std::bad_alloc&) {
        throw;
    } catch (const std::exception& e) {
        throw SerializationError(std::string("procpool: ") + direction + " a " + demangle(typeid(T).name()) +
                                 " failed: its serialize() threw " + demangle(typeid(e).name()) + ": " + e.what());
    } catch (...) {
        throw SerializationError(std::string("procpool: ") + direction + " a " + demangle(typeid(T).name()) +
                                 " failed: its serialize() threw something that is not a std::exception");
    }
}

template <class Variant, std::size_t... I>
void decode_variant(InputArchive& ar, Variant& v, std::size_t index, std::index_sequence<I...>) {
    const bool found =
        ((index == I ? (v.template emplace<I>(decode_as<std::variant_alternative_t<I, Variant>>(ar)), true) : false) ||
         ...);
    if (!found) throw SerializationError("procpool: corrupt data: variant index out of range");
}

}  // namespace detail

/// Encodes `value` into `ar`. Fails to compile for types procpool cannot send.
template <class T>
void encode(OutputArchive& ar, const T& value) {
    using U = std::remove_cv_t<T>;
    if constexpr (!detail::check_serializable<U>()) {
        return;  // the static_asserts above already explained the problem
    } else if constexpr (detail::has_handle_codec<U>) {
        value.procpool_encode(ar);
    } else if constexpr (detail::has_member_serialize<U>) {
        // cereal-style: one member for both directions
        detail::run_user_serialize<U>("encoding", [&] { const_cast<U&>(value).serialize(ar); });
    } else if constexpr (detail::has_free_serialize<U>) {
        detail::run_user_serialize<U>("encoding", [&] { serialize(ar, const_cast<U&>(value)); });
    } else if constexpr (detail::bitwise<U>()) {
        ar.write_bytes(&value, sizeof(U));
    } else if constexpr (detail::is_basic_string<U>::value) {
        ar.write_size(value.size());
        ar.write_bytes(value.data(), value.size() * sizeof(typename U::value_type));
    } else if constexpr (detail::path_like<U>) {
        encode(ar, value.native());
    } else if constexpr (detail::is_bitwise_vector<U>::value) {
        ar.write_size(value.size());
        ar.write_bytes(value.data(), value.size() * sizeof(typename U::value_type));
    } else if constexpr (detail::is_std_array<U>::value) {
        for (const auto& element : value) encode(ar, element);
    } else if constexpr (detail::sequence_like<U> || detail::set_like<U>) {
        ar.write_size(value.size());
        for (const auto& element : value) encode(ar, static_cast<const typename U::value_type&>(element));
    } else if constexpr (detail::map_like<U>) {
        ar.write_size(value.size());
        for (const auto& [key, mapped] : value) {
            encode(ar, key);
            encode(ar, mapped);
        }
    } else if constexpr (detail::is_tuple_like_std<U>::value) {
        detail::encode_tuple(ar, value, std::make_index_sequence<std::tuple_size_v<U>>{});
    } else if constexpr (detail::is_optional<U>::value) {
        const std::uint8_t engaged = value.has_value() ? 1 : 0;
        ar.write_bytes(&engaged, 1);
        if (engaged != 0) encode(ar, *value);
    } else if constexpr (detail::is_variant<U>::value) {
        if (value.valueless_by_exception()) {
            throw SerializationError("procpool: cannot send a std::variant that is valueless_by_exception");
        }
        const auto index = static_cast<std::uint32_t>(value.index());
        ar.write_bytes(&index, sizeof index);
        std::visit([&ar](const auto& alternative) { encode(ar, alternative); }, value);
    } else if constexpr (detail::is_duration<U>::value) {
        encode(ar, value.count());
    } else {
        static_assert(detail::serializable<U>(), "procpool: unhandled serializable type (internal error)");
    }
}

/// Decodes into `value` from `ar`. Throws SerializationError on truncated or corrupt data.
template <class T>
void decode(InputArchive& ar, T& value) {
    using U = std::remove_cv_t<T>;
    if constexpr (!detail::check_serializable<U>()) {
        return;
    } else if constexpr (detail::has_handle_codec<U>) {
        value = U::procpool_decode(ar);
    } else if constexpr (detail::has_member_serialize<U>) {
        detail::run_user_serialize<U>("decoding", [&] { value.serialize(ar); });
    } else if constexpr (detail::has_free_serialize<U>) {
        detail::run_user_serialize<U>("decoding", [&] { serialize(ar, value); });
    } else if constexpr (detail::bitwise<U>()) {
        ar.read_bytes(&value, sizeof(U));
    } else if constexpr (detail::is_basic_string<U>::value) {
        using Char = typename U::value_type;
        const std::size_t n = ar.read_size(sizeof(Char));
        detail::assign_string_bytes(value, ar.take(n * sizeof(Char)), n);
    } else if constexpr (detail::path_like<U>) {
        typename U::string_type native;
        decode(ar, native);
        value = U(std::move(native));
    } else if constexpr (detail::is_bitwise_vector<U>::value) {
        using E = typename U::value_type;
        const std::size_t n = ar.read_size(sizeof(E));
        detail::resize_for_overwrite(value, n);
        ar.read_bytes(value.data(), n * sizeof(E));
    } else if constexpr (detail::is_std_array<U>::value) {
        for (auto& element : value) decode(ar, element);
    } else if constexpr (detail::sequence_like<U>) {
        using E = typename U::value_type;
        const std::size_t n = ar.read_size(detail::min_encoded_size<E>());
        value.clear();
        if constexpr (requires { value.reserve(n); }) value.reserve(n);
        for (std::size_t i = 0; i < n; ++i) value.push_back(detail::decode_as<E>(ar));
    } else if constexpr (detail::set_like<U>) {
        using K = typename U::key_type;
        const std::size_t n = ar.read_size(detail::min_encoded_size<K>());
        value.clear();
        if constexpr (requires { value.reserve(n); }) value.reserve(n);
        for (std::size_t i = 0; i < n; ++i) value.insert(value.end(), detail::decode_as<K>(ar));
    } else if constexpr (detail::map_like<U>) {
        using K = typename U::key_type;
        using M = typename U::mapped_type;
        const std::size_t n = ar.read_size(detail::min_encoded_size<K>() + detail::min_encoded_size<M>());
        value.clear();
        if constexpr (requires { value.reserve(n); }) value.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            K key = detail::decode_as<K>(ar);
            M mapped = detail::decode_as<M>(ar);
            value.emplace_hint(value.end(), std::move(key), std::move(mapped));
        }
    } else if constexpr (detail::is_tuple_like_std<U>::value) {
        detail::decode_tuple(ar, value, std::make_index_sequence<std::tuple_size_v<U>>{});
    } else if constexpr (detail::is_optional<U>::value) {
        std::uint8_t engaged = 0;
        ar.read_bytes(&engaged, 1);
        if (engaged > 1) throw SerializationError("procpool: corrupt data: bad std::optional flag");
        if (engaged != 0) {
            value.emplace(detail::decode_as<typename U::value_type>(ar));
        } else {
            value.reset();
        }
    } else if constexpr (detail::is_variant<U>::value) {
        std::uint32_t index = 0;
        ar.read_bytes(&index, sizeof index);
        detail::decode_variant(ar, value, index, std::make_index_sequence<std::variant_size_v<U>>{});
    } else if constexpr (detail::is_duration<U>::value) {
        typename U::rep count{};
        decode(ar, count);
        value = U(count);
    } else {
        static_assert(detail::serializable<U>(), "procpool: unhandled serializable type (internal error)");
    }
}

/// Encodes `value` into a fresh buffer (convenience for tests and tools).
template <class T>
detail::Buffer to_bytes(const T& value) {
    detail::Buffer buffer;
    OutputArchive ar(buffer);
    encode(ar, value);
    return buffer;
}

/// Decodes a T from `bytes`; throws SerializationError when bytes are left over or missing.
template <class T>
T from_bytes(std::span<const std::byte> bytes) {
    InputArchive ar(bytes);
    T value = detail::decode_as<T>(ar);
    if (ar.remaining() != 0) throw SerializationError("procpool: trailing bytes after the decoded value");
    return value;
}

}  // namespace procpool
