// A callable rejected for what it captures gets that message only, not also advice about its parameter types:
// the capture is what to fix first, and a second message would send the reader looking in the wrong place.
// expect: procpool: this callable cannot be sent to a worker process
// reject: Check the parameter type
// reject: Check its parameter type
#include <procpool/procpool.hpp>
#include <string>
int main() {
    procpool::Pool pool(1);
    std::string prefix = "item ";
    return static_cast<int>(pool.apply([prefix](const std::string& s) { return (prefix + s).size(); }, 1));
}
