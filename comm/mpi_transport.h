// The MPI transport: Transport over host memory, bootstrapped with MPI_Init_thread. Every wait
// polls with a deadline, so a rank that stops answering ends the job with a message instead of a
// hang.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "comm/transport.h"

// Checks an MPI call; throws cadre::Error naming the call, MPI's error string and the rank.
#define CADRE_MPI_CHECK(call)                                                              \
  do {                                                                                     \
    int cadre_mpi_rc_ = (call);                                                            \
    if (cadre_mpi_rc_ != MPI_SUCCESS) ::cadre::comm::throw_mpi_error(#call, cadre_mpi_rc_, \
                                                                     __FILE__, __LINE__);  \
  } while (0)

namespace cadre::comm {

[[noreturn]] void throw_mpi_error(const char* call, int code, const char* file, int line);

// Initialises MPI once per process (MPI_THREAD_MULTIPLE when the library offers it, else the
// highest level it offers; finalised at exit) and returns MPI_COMM_WORLD's rank and size.
void ensure_mpi_initialized(int* argc = nullptr, char*** argv = nullptr);

// A transport over MPI_COMM_WORLD (a duplicate of it, so our traffic never mixes with others').
std::unique_ptr<Transport> make_mpi_transport(double timeout_seconds = 300);

}  // namespace cadre::comm
