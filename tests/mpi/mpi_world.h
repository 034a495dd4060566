// The MPI world of a test process under mpirun (set up by mpi_test_main.cc).
#pragma once

#include "parallel/communicator.h"

namespace resa::testing {

Communicator& MpiWorld();

}  // namespace resa::testing
