// procpool internals: the compile-time side of serialize.hpp: which types travel, how (byte for byte, as a
// container of other values, through a user hook, as a path), and which never do. Part of procpool/serialize.hpp.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "procpool/detail/unsendable.hpp"

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

}  // namespace procpool
