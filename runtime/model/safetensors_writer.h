// Writing safetensors files to disk without holding them in memory: the header is laid out
// from the tensor list up front, then each tensor's bytes are streamed in declared order.
//
// Durability contract: bytes go to a temporary file beside the target ("<path>.partial");
// Commit() checks that every declared byte was written, fsyncs, renames the file onto `path`
// and fsyncs the directory. A writer destroyed before Commit() removes its temporary file, so
// an error or an interrupted run never leaves a file under the final name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/model/safetensors.h"

namespace resa::safetensors {

class SafetensorsStreamWriter {
 public:
  // Creates "<path>.partial" (replacing a stale one) and writes the header. Errors name the path.
  static absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> Create(
      const std::string& path, std::vector<TensorHeader> tensors,
      const std::vector<std::pair<std::string, std::string>>& metadata = {});
  ~SafetensorsStreamWriter();
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;

  // Appends data bytes; they fill the tensors in declared order, and may split a tensor across
  // calls. OutOfRange when more bytes arrive than the tensors declare; write errors (ENOSPC ...)
  // name the file.
  absl::Status Append(const void* data, size_t n);
  // FailedPrecondition unless exactly the declared bytes were appended; then fsync + rename.
  absl::Status Commit();

  const std::string& path() const { return path_; }
  uint64_t data_bytes() const { return data_bytes_; }  // declared data section size
  uint64_t written() const { return written_; }        // data bytes appended so far

 private:
  SafetensorsStreamWriter() = default;
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t data_bytes_ = 0;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Writes `bytes` to `path` through "<path>.partial", fsync and rename (small files: config.json,
// index, tokenizer).
absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes);

// fsyncs a directory so that renames inside it are durable.
absl::Status SyncDirectory(const std::string& dir);

}  // namespace resa::safetensors
