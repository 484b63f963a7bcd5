// procpool internals: carrying a task's exception from a worker back to the caller.
//
// The standard exceptions of the API table (and std::bad_alloc) come back as themselves with the same what();
// procpool's own RemoteError and SerializationError keep their type; anything else becomes RemoteError carrying
// the thrown type's demangled name.
#pragma once

#include <cstdint>
#include <cxxabi.h>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <typeinfo>

#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

enum class ErrorKind : std::uint8_t {
    logic_error = 1,
    invalid_argument,
    domain_error,
    length_error,
    out_of_range,
    runtime_error,
    range_error,
    overflow_error,
    underflow_error,
    bad_alloc,
    remote,
    serialization,
    pool_state,
};

inline std::string demangle(const char* mangled) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
    return status == 0 && readable ? std::string(readable.get()) : std::string(mangled);
}

struct ErrorRecord {
    ErrorKind kind = ErrorKind::remote;
    std::string type_name;
    std::string message;
};

/// Describes the exception being handled. Call only inside a catch block.
inline ErrorRecord describe_current_exception() {
    ErrorRecord record;
    try {
        throw;
    } catch (const RemoteError& e) {
        record = {ErrorKind::remote, e.type_name(), e.what()};
    } catch (const SerializationError& e) {
        record = {ErrorKind::serialization, "procpool::SerializationError", e.what()};
    } catch (const PoolStateError& e) {
        record = {ErrorKind::pool_state, "procpool::PoolStateError", e.what()};
    } catch (const std::bad_alloc& e) {
        record = {ErrorKind::bad_alloc, "std::bad_alloc", e.what()};
    } catch (const std::exception& e) {
        const std::type_info& type = typeid(e);
        record.message = e.what();
        record.type_name = demangle(type.name());
        if (type == typeid(std::logic_error)) record.kind = ErrorKind::logic_error;
        else if (type == typeid(std::invalid_argument)) record.kind = ErrorKind::invalid_argument;
        else if (type == typeid(std::domain_error)) record.kind = ErrorKind::domain_error;
        else if (type == typeid(std::length_error)) record.kind = ErrorKind::length_error;
        else if (type == typeid(std::out_of_range)) record.kind = ErrorKind::out_of_range;
        else if (type == typeid(std::runtime_error)) record.kind = ErrorKind::runtime_error;
        else if (type == typeid(std::range_error)) record.kind = ErrorKind::range_error;
        else if (type == typeid(std::overflow_error)) record.kind = ErrorKind::overflow_error;
        else if (type == typeid(std::underflow_error)) record.kind = ErrorKind::underflow_error;
        else record.kind = ErrorKind::remote;
    } catch (const char* text) {
        record = {ErrorKind::remote, "const char*", text != nullptr ? text : ""};
    } catch (const std::string& text) {
        record = {ErrorKind::remote, "std::string", text};
    } catch (...) {
        const std::type_info* type = abi::__cxa_current_exception_type();
        record = {ErrorKind::remote, type != nullptr ? demangle(type->name()) : "unknown", ""};
    }
    return record;
}

inline void encode_error(OutputArchive& ar, const ErrorRecord& record) {
    const auto kind = static_cast<std::uint8_t>(record.kind);
    ar.write_bytes(&kind, 1);
    ar(record.type_name, record.message);
}

/// Encodes the exception being handled. Call only inside a catch block.
inline void encode_current_exception(OutputArchive& ar) { encode_error(ar, describe_current_exception()); }

inline std::exception_ptr make_exception(const ErrorRecord& r) {
    switch (r.kind) {
        case ErrorKind::logic_error: return std::make_exception_ptr(std::logic_error(r.message));
        case ErrorKind::invalid_argument: return std::make_exception_ptr(std::invalid_argument(r.message));
        case ErrorKind::domain_error: return std::make_exception_ptr(std::domain_error(r.message));
        case ErrorKind::length_error: return std::make_exception_ptr(std::length_error(r.message));
        case ErrorKind::out_of_range: return std::make_exception_ptr(std::out_of_range(r.message));
        case ErrorKind::runtime_error: return std::make_exception_ptr(std::runtime_error(r.message));
        case ErrorKind::range_error: return std::make_exception_ptr(std::range_error(r.message));
        case ErrorKind::overflow_error: return std::make_exception_ptr(std::overflow_error(r.message));
        case ErrorKind::underflow_error: return std::make_exception_ptr(std::underflow_error(r.message));
        case ErrorKind::bad_alloc: return std::make_exception_ptr(std::bad_alloc());
        case ErrorKind::serialization: return std::make_exception_ptr(SerializationError(r.message));
        case ErrorKind::pool_state: return std::make_exception_ptr(PoolStateError(r.message));
        case ErrorKind::remote: break;
    }
    return std::make_exception_ptr(RemoteError(r.type_name, r.message));
}

inline std::exception_ptr decode_error(InputArchive& ar) {
    std::uint8_t kind = 0;
    ar.read_bytes(&kind, 1);
    ErrorRecord record;
    ar(record.type_name, record.message);
    if (kind < static_cast<std::uint8_t>(ErrorKind::logic_error) ||
        kind > static_cast<std::uint8_t>(ErrorKind::pool_state)) {
        throw SerializationError("procpool: corrupt data: unknown error kind");
    }
    record.kind = static_cast<ErrorKind>(kind);
    return make_exception(record);
}

}  // namespace procpool::detail
