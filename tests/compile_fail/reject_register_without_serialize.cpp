// register_exception<E> needs E's state: a serialize() member (the message included).
// expect: procpool::register_exception<E>: E needs a member `template <class Archive> void serialize(Archive& ar)`
#include <procpool/procpool.hpp>
#include <stdexcept>
struct Plain : std::runtime_error {
    Plain() : std::runtime_error("") {}
};
int main() { procpool::register_exception<Plain>(); }
