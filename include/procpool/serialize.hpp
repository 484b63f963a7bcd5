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
#include "procpool/detail/serialize_traits.hpp"
#include "procpool/detail/unsendable.hpp"
#include "procpool/errors.hpp"

namespace procpool {

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
