#include "runtime/model/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa::safetensors {
namespace {

absl::Status Errno(absl::string_view call, const std::string& path, int err) {
  const std::string what = absl::StrCat(path, ": ", call, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(absl::StrCat(what, " (the disk is full)"));
  }
  if (err == EACCES || err == EPERM || err == EROFS) return absl::PermissionDeniedError(what);
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(what);
  return absl::InternalError(what);
}

absl::Status WriteAll(int fd, const std::string& path, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("write", path, errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// Opens "<path>.partial" for writing, replacing a stale one.
absl::StatusOr<int> OpenTemp(const std::string& temp_path) {
  const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("open", temp_path, errno);
  return fd;
}

absl::Status SyncCloseRename(int fd, const std::string& temp_path, const std::string& path) {
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return Errno("fsync", temp_path, err);
  }
  if (::close(fd) != 0) return Errno("close", temp_path, errno);
  if (::rename(temp_path.c_str(), path.c_str()) != 0) return Errno("rename", path, errno);
  return absl::OkStatus();
}

std::string ParentDir(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> SafetensorsStreamWriter::Create(
    const std::string& path, std::vector<TensorHeader> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::unique_ptr<SafetensorsStreamWriter> w(new SafetensorsStreamWriter());
  w->path_ = path;
  w->temp_path_ = path + ".partial";
  for (const TensorHeader& t : tensors) w->data_bytes_ += t.num_bytes();
  const std::string header = SerializeHeader(tensors, metadata);
  RESA_ASSIGN_OR_RETURN(w->fd_, OpenTemp(w->temp_path_));
  RESA_RETURN_IF_ERROR(WriteAll(w->fd_, w->temp_path_, header.data(), header.size()));
  return w;
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

absl::Status SafetensorsStreamWriter::Append(const void* data, size_t n) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is closed"));
  if (n > data_bytes_ - written_) {
    return absl::OutOfRangeError(absl::StrCat(path_, ": appending ", n, " bytes after ", written_,
                                              " of ", data_bytes_, " declared"));
  }
  RESA_RETURN_IF_ERROR(WriteAll(fd_, temp_path_, data, n));
  written_ += n;
  return absl::OkStatus();
}

absl::Status SafetensorsStreamWriter::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is closed"));
  if (written_ != data_bytes_) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": ", written_, " of ", data_bytes_,
                                                      " declared data bytes were written"));
  }
  const int fd = fd_;
  fd_ = -1;
  RESA_RETURN_IF_ERROR(SyncCloseRename(fd, temp_path_, path_));
  committed_ = true;
  return SyncDirectory(ParentDir(path_));
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes) {
  const std::string temp_path = path + ".partial";
  RESA_ASSIGN_OR_RETURN(const int fd, OpenTemp(temp_path));
  if (absl::Status st = WriteAll(fd, temp_path, bytes.data(), bytes.size()); !st.ok()) {
    ::close(fd);
    ::unlink(temp_path.c_str());
    return st;
  }
  if (absl::Status st = SyncCloseRename(fd, temp_path, path); !st.ok()) {
    ::unlink(temp_path.c_str());
    return st;
  }
  return SyncDirectory(ParentDir(path));
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("open", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems refuse fsync on directories; the rename is then as durable as they allow.
  if (rc != 0 && err != EINVAL && err != EROFS) return Errno("fsync", dir, err);
  return absl::OkStatus();
}

}  // namespace resa::safetensors
