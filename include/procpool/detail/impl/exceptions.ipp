// procpool internals: the definitions of detail/exceptions.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <cxxabi.h>
#include <exception>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <typeinfo>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/demangle.hpp"
#include "procpool/detail/exception_registry.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

PROCPOOL_DECL std::string fields_payload(const WorkerFaultFields& fields) {
    const Buffer bytes = to_bytes(fields);
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

PROCPOOL_DECL std::string describe_thrown_value(const std::string& type_name) {
    const std::string prefix = "procpool: the task threw " + type_name;
    try {
        throw;
    } catch (bool v) {
        return prefix + (v ? " true" : " false");
    } catch (char v) {
        return prefix + " '" + std::string(1, v) + "'";
    } catch (signed char v) {
        return prefix + " " + std::to_string(v);
    } catch (unsigned char v) {
        return prefix + " " + std::to_string(v);
    } catch (short v) {
        return prefix + " " + std::to_string(v);
    } catch (unsigned short v) {
        return prefix + " " + std::to_string(v);
    } catch (int v) {
        return prefix + " " + std::to_string(v);
    } catch (unsigned v) {
        return prefix + " " + std::to_string(v);
    } catch (long v) {
        return prefix + " " + std::to_string(v);
    } catch (unsigned long v) {
        return prefix + " " + std::to_string(v);
    } catch (long long v) {
        return prefix + " " + std::to_string(v);
    } catch (unsigned long long v) {
        return prefix + " " + std::to_string(v);
    } catch (float v) {
        return prefix + " " + std::to_string(v);
    } catch (double v) {
        return prefix + " " + std::to_string(v);
    } catch (long double v) {
        return prefix + " " + std::to_string(v);
    } catch (...) {
        return prefix +
               ", which is not a std::exception (register it with procpool::register_exception<E>() to "
               "get it back as itself; E must derive from std::exception)";
    }
}

PROCPOOL_DECL std::optional<ErrorRecord> describe_registered_exception() {
    const std::type_info* type = abi::__cxa_current_exception_type();
    if (type == nullptr) return std::nullopt;
    const std::optional<ExceptionCodec> codec = ExceptionRegistry::instance().find(*type);
    if (!codec) return std::nullopt;
    ErrorRecord record{ErrorKind::registered, type->name(), {}, {}};
    try {
        Buffer state;
        OutputArchive ar(state);
        codec->encode(ar);
        record.payload.assign(reinterpret_cast<const char*>(state.data()), state.size());
    } catch (...) {
        return std::nullopt;
    }
    try {
        throw;
    } catch (const std::exception& e) {  // (register_exception() admits only types derived from std::exception)
        record.message = e.what();
    } catch (...) {
    }
    return record;
}

PROCPOOL_DECL ErrorRecord describe_current_exception() {
    if (std::optional<ErrorRecord> registered = describe_registered_exception()) return *std::move(registered);
    ErrorRecord record;
    try {
        throw;
    } catch (const RemoteError& e) {
        record = {ErrorKind::remote, e.type_name(), e.what(), {}};
    } catch (const SerializationError& e) {
        record = {ErrorKind::serialization, "procpool::SerializationError", e.what(), {}};
    } catch (const PoolStateError& e) {
        record = {ErrorKind::pool_state, "procpool::PoolStateError", e.what(), {}};
    } catch (const WorkerCrashed& e) {
        record = {ErrorKind::worker_crashed, "procpool::WorkerCrashed", e.what(),
                  fields_payload({e.pid(), e.signal(), e.exit_code(), 0, e.where()})};
    } catch (const TaskTimeout& e) {
        record = {ErrorKind::task_timeout, "procpool::TaskTimeout", e.what(),
                  fields_payload({e.pid(), 0, 0, e.timeout().count(), e.where()})};
    } catch (const TimeoutError& e) {
        record = {ErrorKind::timeout_error, "procpool::TimeoutError", e.what(), {}};
    } catch (const BrokenBarrierError& e) {
        record = {ErrorKind::broken_barrier, "procpool::BrokenBarrierError", e.what(), {}};
    } catch (const BrokenPipeError& e) {
        record = {ErrorKind::broken_pipe, "procpool::BrokenPipeError", e.what(), {}};
    } catch (const BrokenSegmentError& e) {
        record = {ErrorKind::broken_segment, "procpool::BrokenSegmentError", e.what(), {}};
    } catch (const std::bad_alloc& e) {
        record = {ErrorKind::bad_alloc, "std::bad_alloc", e.what(), {}};
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
        record = {ErrorKind::remote, "const char*", text != nullptr ? text : "", {}};
    } catch (const std::string& text) {
        record = {ErrorKind::remote, "std::string", text, {}};
    } catch (...) {
        const std::type_info* type = abi::__cxa_current_exception_type();
        record.type_name = type != nullptr ? demangle(type->name()) : "unknown";
        record.message = describe_thrown_value(record.type_name);
    }
    return record;
}

PROCPOOL_DECL void encode_error(OutputArchive& ar, const ErrorRecord& record) {
    const auto kind = static_cast<std::uint8_t>(record.kind);
    ar.write_bytes(&kind, 1);
    ar(record.type_name, record.message);
    if (carries_payload(record.kind)) ar(record.payload);
}

PROCPOOL_DECL void encode_current_exception(OutputArchive& ar) { encode_error(ar, describe_current_exception()); }

PROCPOOL_DECL std::exception_ptr make_registered_exception(const ErrorRecord& r) {
    const std::string readable = demangle(r.type_name.c_str());
    if (const std::optional<ExceptionCodec> codec = ExceptionRegistry::instance().find(r.type_name)) {
        try {
            InputArchive ar(std::as_bytes(std::span(r.payload.data(), r.payload.size())));
            std::exception_ptr error = codec->decode(ar);
            if (ar.remaining() != 0) throw SerializationError("procpool: trailing bytes after the exception's state");
            return error;
        } catch (const std::exception& e) {
            return std::make_exception_ptr(
                RemoteError(readable, r.message + " (procpool: its state could not be decoded: " + e.what() + ")"));
        }
    }
    return std::make_exception_ptr(RemoteError(readable, r.message));
}

PROCPOOL_DECL std::exception_ptr make_exception(const ErrorRecord& r) {
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
        case ErrorKind::worker_crashed: {
            const WorkerFaultFields f = from_bytes<WorkerFaultFields>(std::as_bytes(std::span(r.payload)));
            return std::make_exception_ptr(WorkerCrashed(f.pid, f.signal, f.exit_code, f.where));
        }
        case ErrorKind::task_timeout: {
            const WorkerFaultFields f = from_bytes<WorkerFaultFields>(std::as_bytes(std::span(r.payload)));
            return std::make_exception_ptr(TaskTimeout(f.pid, std::chrono::milliseconds(f.timeout_ms), f.where));
        }
        case ErrorKind::timeout_error: return std::make_exception_ptr(TimeoutError(r.message));
        case ErrorKind::broken_barrier: return std::make_exception_ptr(BrokenBarrierError(r.message));
        case ErrorKind::broken_pipe: return std::make_exception_ptr(BrokenPipeError(r.message));
        case ErrorKind::broken_segment: return std::make_exception_ptr(BrokenSegmentError(r.message));
        case ErrorKind::registered: return make_registered_exception(r);
        case ErrorKind::remote: break;
    }
    return std::make_exception_ptr(RemoteError(r.type_name, r.message));
}

PROCPOOL_DECL std::exception_ptr decode_error(InputArchive& ar) {
    std::uint8_t kind = 0;
    ar.read_bytes(&kind, 1);
    ErrorRecord record;
    ar(record.type_name, record.message);
    if (kind < static_cast<std::uint8_t>(ErrorKind::logic_error) ||
        kind > static_cast<std::uint8_t>(ErrorKind::last_kind)) {
        throw SerializationError("procpool: corrupt data: unknown error kind");
    }
    record.kind = static_cast<ErrorKind>(kind);
    if (carries_payload(record.kind)) ar(record.payload);
    return make_exception(record);
}

}  // namespace procpool::detail
