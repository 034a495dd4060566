// Process-level defaults the programs apply first thing in main().
#pragma once

namespace resa {

// OpenMP threads that spin while they wait (libgomp's default) turn any oversubscription of the
// cores (another busy process, several MPI ranks per host) into a collapse: decode measured 30x
// slower on 2 cores next to one other busy process, against 9% faster when the cores are idle.
// libgomp reads OMP_WAIT_POLICY once, when it is loaded, so the default can only change before
// the program starts: when the variable is unset, set it to "passive" and re-execute the program
// (same pid, arguments and environment otherwise). An explicit setting is kept as it is.
void DefaultOpenMpWaitPolicy(char** argv);

}  // namespace resa
