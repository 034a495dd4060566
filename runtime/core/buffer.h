// A large, uninitialised, 64-byte aligned float array for weights and caches: no zero-fill pass
// (loaders overwrite every element), and transparent huge pages requested for big buffers so
// streaming them costs fewer TLB misses.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <utility>

namespace resa {

class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(size_t n) { resize(n); }
  ~FloatBuffer() { std::free(data_); }
  FloatBuffer(FloatBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)),
                                          size_(std::exchange(o.size_, 0)) {}
  FloatBuffer& operator=(FloatBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;

  // Reallocates to n elements; contents are unspecified. Returns false when out of memory
  // (the buffer is then empty).
  bool resize(size_t n);

  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  float& operator[](size_t i) { return data_[i]; }
  const float& operator[](size_t i) const { return data_[i]; }
  float* begin() { return data_; }
  float* end() { return data_ + size_; }
  const float* begin() const { return data_; }
  const float* end() const { return data_ + size_; }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace resa
