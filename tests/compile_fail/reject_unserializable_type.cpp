// A type of yours that is neither trivially copyable nor serializable: the message says how to make it one.
// expect: procpool: this type cannot be sent to a worker process
// expect: give the type a member
#include <procpool/procpool.hpp>
#include <string>
struct Record {
    std::string name;
    int id = 0;
};
int main() {
    procpool::Pool pool(1);
    return pool.apply([](const Record& r) { return r.id; }, Record{"x", 1});
}
