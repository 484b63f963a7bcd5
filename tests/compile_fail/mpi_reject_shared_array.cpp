// Shared-memory objects cannot cross machines: the MPI pool rejects them at compile time.
// expect: procpool: shared-memory objects (SharedArray, SharedValue, Lock, Queue...) cannot cross machines
// needs: mpi
#include <procpool/mpi.hpp>
int main(int argc, char** argv) {
    procpool::mpi::Session session(argc, argv);
    procpool::SharedArray<int> cells(10);
    session.pool().apply([](procpool::SharedArray<int> a) { return a[0]; }, cells);
}
