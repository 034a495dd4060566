#include "runtime/serving/support/security.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "resa.grpc.pb.h"

namespace resa::serving {
namespace {

namespace fs = std::filesystem;

TEST(IsLoopbackAddress, AcceptsOnlyLocalAddresses) {
  for (const char* addr : {"127.0.0.1:50051", "127.3.2.1:1", "localhost:50051", "LOCALHOST:1",
                           "[::1]:50051", "::1", "127.0.0.1", "unix:/tmp/resa.sock",
                           "unix-abstract:resa", "ipv4:127.0.0.1:5", "dns:///localhost:50051",
                           "[::ffff:127.0.0.1]:80"}) {
    EXPECT_TRUE(IsLoopbackAddress(addr)) << addr;
  }
  for (const char* addr : {"0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.5:50051",
                           "128.0.0.1:1", "example.com:443", "localhost.example.com:1",
                           "[2001:db8::1]:50051", "", "[::ffff:10.0.0.1]:80"}) {
    EXPECT_FALSE(IsLoopbackAddress(addr)) << addr;
  }
}

// Throwaway CA, server and client certificates made with openssl for this run.
class TlsFiles : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("resa_security_test_" + std::to_string(getpid()));
    const char* src = std::getenv("RESA_SOURCE_DIR");
    const std::string script =
        std::string(src != nullptr ? src : ".") + "/tests/serving/make_test_certs.sh";
    ok_ = std::system((script + " " + dir_.string() + " >/dev/null 2>&1").c_str()) == 0;
    std::ofstream(dir_ / "token") << "  s3cret-token\n";
    std::ofstream(dir_ / "empty");
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  void SetUp() override {
    if (!ok_) GTEST_SKIP() << "openssl or tests/serving/make_test_certs.sh unavailable";
  }
  static std::string File(const char* name) { return (dir_ / name).string(); }

  static inline fs::path dir_;
  static inline bool ok_ = false;
};

TEST_F(TlsFiles, ServerCredentialRules) {
  ServerSecurityOptions o;
  EXPECT_TRUE(MakeServerCredentials(o).ok());  // loopback default, plaintext

  o.listen = "0.0.0.0:50051";
  absl::Status st = MakeServerCredentials(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("not a loopback address"), std::string::npos) << st;
  EXPECT_NE(st.message().find("TLS and authentication"), std::string::npos) << st;

  o.allow_insecure_remote = true;
  EXPECT_TRUE(MakeServerCredentials(o).ok());
  o.allow_insecure_remote = false;

  o.tls_cert = File("server.pem");
  o.tls_key = File("server.key");
  st = MakeServerCredentials(o).status();  // TLS but nobody authenticated
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("missing: authentication"), std::string::npos) << st;

  o.token_file = File("token");
  EXPECT_TRUE(MakeServerCredentials(o).ok());
  EXPECT_EQ(*LoadServerToken(o), "s3cret-token");
  o.token_file.clear();
  o.tls_client_ca = File("ca.pem");  // mTLS counts as authentication
  EXPECT_TRUE(MakeServerCredentials(o).ok());

  ServerSecurityOptions half;
  half.tls_cert = File("server.pem");
  st = MakeServerCredentials(half).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("--tls-key"), std::string::npos) << st;

  ServerSecurityOptions ca_only;
  ca_only.tls_client_ca = File("ca.pem");
  EXPECT_EQ(MakeServerCredentials(ca_only).status().code(), absl::StatusCode::kInvalidArgument);

  ServerSecurityOptions missing;
  missing.tls_cert = File("nope.pem");
  missing.tls_key = File("server.key");
  st = MakeServerCredentials(missing).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.message().find("nope.pem"), std::string::npos) << st;

  ServerSecurityOptions swapped;  // a key where the certificate belongs
  swapped.tls_cert = File("server.key");
  swapped.tls_key = File("server.key");
  EXPECT_EQ(MakeServerCredentials(swapped).status().code(), absl::StatusCode::kInvalidArgument);

  ServerSecurityOptions empty_token;
  empty_token.token_file = File("empty");
  st = MakeServerCredentials(empty_token).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("is empty"), std::string::npos) << st;
}

TEST(ClientSecurity, ChannelOptionRules) {
  ClientSecurityOptions o;
  EXPECT_TRUE(MakeChannel("127.0.0.1:1", o, 1 << 20).ok());
  EXPECT_FALSE(MakeChannel("", o, 0).ok());
  o.tls_server_name = "localhost";  // only meaningful with TLS
  EXPECT_EQ(MakeChannel("127.0.0.1:1", o, 0).status().code(), absl::StatusCode::kInvalidArgument);
  ClientSecurityOptions both;
  both.token = "a";
  both.token_file = "/nonexistent";
  EXPECT_EQ(MakeChannel("127.0.0.1:1", both, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  ClientSecurityOptions missing_ca;
  missing_ca.tls_ca = "/nonexistent/ca.pem";
  EXPECT_EQ(MakeChannel("127.0.0.1:1", missing_ca, 0).status().code(),
            absl::StatusCode::kNotFound);
}

// ModelInfo answers OK only to callers that pass CheckBearerToken.
class AuthService final : public resa::v1::Resa::Service {
 public:
  explicit AuthService(std::string token) : token_(std::move(token)) {}
  grpc::Status ModelInfo(grpc::ServerContext* context, const resa::v1::ModelInfoRequest*,
                         resa::v1::ModelInfoResponse* response) override {
    if (grpc::Status st = CheckBearerToken(*context, token_); !st.ok()) return st;
    response->set_model("ok");
    return grpc::Status::OK;
  }

 private:
  std::string token_;
};

struct RunningServer {
  std::unique_ptr<AuthService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

RunningServer Start(const ServerSecurityOptions& options) {
  RunningServer s;
  absl::StatusOr<std::string> token = LoadServerToken(options);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = MakeServerCredentials(options);
  if (!token.ok() || !creds.ok()) return s;
  s.service = std::make_unique<AuthService>(*token);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *creds, &s.port);
  builder.RegisterService(s.service.get());
  s.server = builder.BuildAndStart();
  return s;
}

grpc::Status Call(int port, const ClientSecurityOptions& options,
                  const std::string& raw_authorization = "") {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      MakeChannel("localhost:" + std::to_string(port), options, 1 << 20);
  if (!channel.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, channel.status().ToString());
  auto stub = resa::v1::Resa::NewStub(*channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (raw_authorization.empty()) {
    AddAuth(context, options);
  } else {
    context.AddMetadata("authorization", raw_authorization);
  }
  resa::v1::ModelInfoResponse response;
  grpc::Status st = stub->ModelInfo(&context, resa::v1::ModelInfoRequest(), &response);
  if (st.ok() && response.model() != "ok") return grpc::Status(grpc::StatusCode::INTERNAL, "?");
  return st;
}

TEST_F(TlsFiles, BearerTokenOnPlaintextLoopback) {
  ServerSecurityOptions so;
  so.listen = "127.0.0.1:0";
  so.token_file = File("token");
  RunningServer s = Start(so);
  ASSERT_NE(s.server, nullptr);

  ClientSecurityOptions none;
  grpc::Status st = Call(s.port, none);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(st.error_message().find("requires a bearer token"), std::string::npos);

  ClientSecurityOptions wrong;
  wrong.token = "s3cret-tokeN";
  st = Call(s.port, wrong);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(st.error_message(), "invalid bearer token");
  wrong.token = "s3cret-token-and-more";
  EXPECT_EQ(Call(s.port, wrong).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  st = Call(s.port, none, "Basic s3cret-token");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(st.error_message().find("malformed"), std::string::npos);

  ClientSecurityOptions right;
  right.token_file = File("token");
  EXPECT_TRUE(Call(s.port, right).ok()) << Call(s.port, right).error_message();
  EXPECT_TRUE(Call(s.port, none, "bearer s3cret-token").ok());  // the scheme is case-insensitive
  s.server->Shutdown();
}

TEST_F(TlsFiles, TlsRoundTripWithTokenAndClientCertificates) {
  ServerSecurityOptions so;
  so.listen = "127.0.0.1:0";
  so.tls_cert = File("server.pem");
  so.tls_key = File("server.key");
  so.token_file = File("token");
  RunningServer s = Start(so);
  ASSERT_NE(s.server, nullptr);

  ClientSecurityOptions co;
  co.tls_ca = File("ca.pem");
  co.token = "s3cret-token";
  EXPECT_TRUE(Call(s.port, co).ok()) << Call(s.port, co).error_message();
  ClientSecurityOptions plaintext;
  plaintext.token = "s3cret-token";
  EXPECT_EQ(Call(s.port, plaintext).error_code(), grpc::StatusCode::UNAVAILABLE);
  ClientSecurityOptions no_token;
  no_token.tls_ca = File("ca.pem");
  EXPECT_EQ(Call(s.port, no_token).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  s.server->Shutdown();

  so.tls_client_ca = File("ca.pem");
  so.token_file.clear();
  RunningServer m = Start(so);
  ASSERT_NE(m.server, nullptr);
  ClientSecurityOptions no_cert;
  no_cert.tls_ca = File("ca.pem");
  EXPECT_FALSE(Call(m.port, no_cert).ok());
  ClientSecurityOptions with_cert = no_cert;
  with_cert.tls_cert = File("client.pem");
  with_cert.tls_key = File("client.key");
  EXPECT_TRUE(Call(m.port, with_cert).ok()) << Call(m.port, with_cert).error_message();
  m.server->Shutdown();
}

}  // namespace
}  // namespace resa::serving
