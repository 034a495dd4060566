#include "runtime/model/safetensors_writer.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace resa::safetensors {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class SafetensorsWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("resa_st_writer_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

std::string Ramp(size_t n, int start) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(start + static_cast<int>(i));
  return s;
}

// The streamed file equals SerializeSafetensors of the same tensors, byte for byte, however
// the data is split across Append calls.
TEST_F(SafetensorsWriterTest, StreamedEqualsInMemory) {
  const std::string a = Ramp(2 * 3 * 2, 1), b = Ramp(5 * 4, 50);
  const std::vector<TensorHeader> headers = {{"a", Dtype::kBF16, {2, 3}},
                                             {"b.weight", Dtype::kF32, {5}}};
  auto w = SafetensorsStreamWriter::Create(Path("m.safetensors"), headers, {{"format", "pt"}});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->data_bytes(), a.size() + b.size());
  const std::string data = a + b;
  for (size_t i = 0; i < data.size(); i += 7) {
    ASSERT_TRUE((*w)->Append(data.data() + i, std::min<size_t>(7, data.size() - i)).ok());
  }
  EXPECT_FALSE(fs::exists(Path("m.safetensors")));  // nothing under the final name yet
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_FALSE(fs::exists(Path("m.safetensors.partial")));

  std::ifstream in(Path("m.safetensors"), std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(file, SerializeSafetensors(
                      {{"a", Dtype::kBF16, {2, 3}, a}, {"b.weight", Dtype::kF32, {5}, b}},
                      {{"format", "pt"}}));
  auto parsed = SafetensorsFile::Open(Path("m.safetensors"));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const TensorInfo* t = (*parsed)->Find("b.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(t->data), t->end - t->begin), b);
}

TEST_F(SafetensorsWriterTest, ShortOrLongDataIsRefusedAndLeavesNoFile) {
  {
    auto w = SafetensorsStreamWriter::Create(Path("short.safetensors"), {{"x", Dtype::kF16, {4}}});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append("abcd", 4).ok());
    const absl::Status st = (*w)->Append("0123456789", 10);
    EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
    const absl::Status commit = (*w)->Commit();
    EXPECT_EQ(commit.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(commit.message(), HasSubstr("4 of 8 declared"));
    EXPECT_TRUE(fs::exists(Path("short.safetensors.partial")));
  }
  // Destroyed uncommitted: the temporary file is gone, no file under the final name.
  EXPECT_FALSE(fs::exists(Path("short.safetensors.partial")));
  EXPECT_FALSE(fs::exists(Path("short.safetensors")));
}

TEST_F(SafetensorsWriterTest, UnwritableDirectoryNamesThePath) {
  auto w =
      SafetensorsStreamWriter::Create(Path("no/such/dir/m.safetensors"), {{"x", Dtype::kF32, {1}}});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("no/such/dir/m.safetensors.partial"));
}

TEST_F(SafetensorsWriterTest, FullDiskIsResourceExhausted) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  // /dev/full accepts open() and fails every write with ENOSPC; "<path>.partial" must be it.
  const std::string link = Path("full.safetensors");
  fs::create_symlink("/dev/full", link + ".partial");
  auto w = SafetensorsStreamWriter::Create(link, {{"x", Dtype::kF32, {1}}});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(w.status().message(), HasSubstr("disk is full"));
}

TEST_F(SafetensorsWriterTest, WriteFileAtomically) {
  ASSERT_TRUE(WriteFileAtomically(Path("c.json"), "{}\n").ok());
  std::ifstream in(Path("c.json"));
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(s, "{}\n");
  EXPECT_FALSE(fs::exists(Path("c.json.partial")));
}

}  // namespace
}  // namespace resa::safetensors
