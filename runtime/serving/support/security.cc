#include "runtime/serving/support/security.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa::serving {
namespace {

constexpr std::string_view kBearer = "bearer ";

// Compares in time that depends only on expected.size(), never on where `given` differs.
bool ConstantTimeEquals(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= static_cast<unsigned char>(g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

// The host part of a listen address or target (see IsLoopbackAddress for the accepted forms).
std::string_view HostOf(std::string_view addr) {
  for (std::string_view prefix : {"ipv4:", "ipv6:"}) {
    if (absl::StartsWith(AsAbsl(addr), AsAbsl(prefix))) addr.remove_prefix(prefix.size());
  }
  if (absl::StartsWith(AsAbsl(addr), "dns:")) {
    addr.remove_prefix(4);
    if (absl::StartsWith(AsAbsl(addr), "//")) {  // dns://authority/host:port
      const size_t slash = addr.find('/', 2);
      addr = slash == std::string_view::npos ? std::string_view() : addr.substr(slash + 1);
    }
  }
  // A gRPC target may list several addresses ("ipv4:a,b"): loopback only if the first is, and
  // callers that care about the rest pass one address.
  addr = addr.substr(0, addr.find(','));
  if (!addr.empty() && addr.front() == '[') {
    const size_t close = addr.find(']');
    return close == std::string_view::npos ? addr.substr(1) : addr.substr(1, close - 1);
  }
  const size_t first = addr.find(':');
  if (first == std::string_view::npos) return addr;          // bare host
  if (addr.find(':', first + 1) != std::string_view::npos) return addr;  // bare IPv6
  return addr.substr(0, first);
}

std::string Trimmed(std::string_view s) {
  return std::string(absl::StripAsciiWhitespace(AsAbsl(s)));
}

}  // namespace

absl::StatusOr<std::string> ReadCredentialFile(const std::string& path, std::string_view what) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), ": empty path"));
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string why = std::strerror(err);
    if (err == EACCES) {
      return absl::PermissionDeniedError(absl::StrCat(AsAbsl(what), " ", path, ": ", why));
    }
    return absl::NotFoundError(absl::StrCat(AsAbsl(what), " ", path, ": ", why));
  }
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(AsAbsl(what), " ", path, ": read error"));
  }
  if (absl::StripAsciiWhitespace(data).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), " ", path, " is empty"));
  }
  return data;
}

void AddServerSecurityFlags(CLI::App& app, ServerSecurityOptions& options) {
  app.add_option("--listen", options.listen,
                 "address to serve gRPC on, host:port or unix:PATH; anything but loopback needs "
                 "--tls-cert/--tls-key and --token-file or --tls-client-ca")
      ->capture_default_str();
  app.add_option("--tls-cert", options.tls_cert, "PEM certificate chain of the server (TLS)");
  app.add_option("--tls-key", options.tls_key, "PEM private key for --tls-cert");
  app.add_option("--tls-client-ca", options.tls_client_ca,
                 "PEM CA certificate: require and verify client certificates signed by it");
  app.add_option("--token-file", options.token_file,
                 "file holding the bearer token clients must send (authorization: Bearer ...)")
      ->envname("RESA_TOKEN_FILE");
  app.add_flag("--allow-insecure-remote", options.allow_insecure_remote,
               "allow a non-loopback --listen without TLS and authentication (trusted networks "
               "only)");
}

absl::StatusOr<std::string> LoadServerToken(const ServerSecurityOptions& options) {
  if (options.token_file.empty()) return std::string();
  RESA_ASSIGN_OR_RETURN(std::string raw, ReadCredentialFile(options.token_file, "--token-file"));
  return Trimmed(raw);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options) {
  if (options.listen.empty()) return absl::InvalidArgumentError("--listen is empty");
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: give both (TLS) or neither (plaintext)");
  }
  const bool tls = !options.tls_cert.empty();
  if (!options.tls_client_ca.empty() && !tls) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  RESA_ASSIGN_OR_RETURN(const std::string token, LoadServerToken(options));
  const bool authenticated = !token.empty() || !options.tls_client_ca.empty();
  if (!IsLoopbackAddress(options.listen) && !options.allow_insecure_remote &&
      !(tls && authenticated)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen ", options.listen,
        " is not a loopback address: serving beyond this machine needs TLS (--tls-cert, "
        "--tls-key) and authentication (--token-file or --tls-client-ca); missing: ",
        tls ? "" : "TLS", !tls && !authenticated ? " and " : "",
        authenticated ? "" : "authentication",
        " (or pass --allow-insecure-remote on a trusted network)"));
  }
  if (!tls) return grpc::InsecureServerCredentials();

  grpc::SslServerCredentialsOptions ssl(
      options.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                    : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  RESA_ASSIGN_OR_RETURN(pair.cert_chain, ReadCredentialFile(options.tls_cert, "--tls-cert"));
  RESA_ASSIGN_OR_RETURN(pair.private_key, ReadCredentialFile(options.tls_key, "--tls-key"));
  if (!absl::StrContains(pair.cert_chain, "-----BEGIN CERTIFICATE-----")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", options.tls_cert, " holds no PEM certificate"));
  }
  if (!absl::StrContains(pair.private_key, "PRIVATE KEY-----")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", options.tls_key, " holds no PEM private key"));
  }
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!options.tls_client_ca.empty()) {
    RESA_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                          ReadCredentialFile(options.tls_client_ca, "--tls-client-ca"));
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(ssl);
  if (creds == nullptr) {
    return absl::InvalidArgumentError("gRPC refused the TLS server credentials");
  }
  return creds;
}

bool IsLoopbackAddress(std::string_view host_port) {
  if (absl::StartsWith(AsAbsl(host_port), "unix:") ||
      absl::StartsWith(AsAbsl(host_port), "unix-abstract:")) {
    return true;
  }
  const std::string host(HostOf(host_port));
  if (host.empty()) return false;  // ":50051" binds every interface
  if (absl::EqualsIgnoreCase(host, "localhost")) return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

grpc::Status CheckBearerToken(const grpc::ServerContextBase& context, const std::string& expected) {
  if (expected.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this server requires a bearer token: send metadata "
                        "'authorization: Bearer <token>' (resa-client --token-file FILE)");
  }
  const std::string_view value(it->second.data(), it->second.size());
  const absl::string_view trimmed = absl::StripAsciiWhitespace(AsAbsl(value));
  if (trimmed.size() <= kBearer.size() || !absl::StartsWithIgnoreCase(trimmed, AsAbsl(kBearer))) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "malformed authorization metadata: expected 'Bearer <token>'");
  }
  const absl::string_view given =
      absl::StripLeadingAsciiWhitespace(trimmed.substr(kBearer.size()));
  if (!ConstantTimeEquals(std::string_view(given.data(), given.size()), expected)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  }
  return grpc::Status::OK;
}

void AddClientSecurityFlags(CLI::App& app, ClientSecurityOptions& options) {
  app.add_flag("--tls", options.tls,
               "connect with TLS, verifying the server with the system's root certificates");
  app.add_option("--tls-ca", options.tls_ca,
                 "PEM CA certificate to verify the server with (implies --tls)");
  app.add_option("--tls-cert", options.tls_cert,
                 "PEM client certificate, for servers that require one (implies --tls)");
  app.add_option("--tls-key", options.tls_key, "PEM private key for --tls-cert");
  app.add_option("--token", options.token,
                 "bearer token to send (visible in the process list: prefer --token-file)")
      ->envname("RESA_TOKEN");
  app.add_option("--token-file", options.token_file, "file holding the bearer token to send")
      ->envname("RESA_TOKEN_FILE");
  app.add_option("--tls-server-name", options.tls_server_name,
                 "name the server's certificate must carry, when it differs from the host "
                 "in the address");
}

bool UsesTls(const ClientSecurityOptions& options) {
  return options.tls || !options.tls_ca.empty() || !options.tls_cert.empty();
}

absl::StatusOr<std::string> ResolveClientToken(const ClientSecurityOptions& options) {
  if (!options.token.empty() && !options.token_file.empty()) {
    return absl::InvalidArgumentError("give --token or --token-file, not both");
  }
  if (!options.token.empty()) return Trimmed(options.token);
  if (options.token_file.empty()) return std::string();
  RESA_ASSIGN_OR_RETURN(std::string raw, ReadCredentialFile(options.token_file, "--token-file"));
  return Trimmed(raw);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ClientSecurityOptions& options,
                                                           int max_message_bytes) {
  if (target.empty()) return absl::InvalidArgumentError("empty server address");
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  RESA_ASSIGN_OR_RETURN(const std::string token, ResolveClientToken(options));
  grpc::ChannelArguments args;
  if (max_message_bytes > 0) {
    args.SetMaxReceiveMessageSize(max_message_bytes);
    args.SetMaxSendMessageSize(max_message_bytes);
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (UsesTls(options)) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca.empty()) {
      RESA_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadCredentialFile(options.tls_ca, "--tls-ca"));
    }
    if (!options.tls_cert.empty()) {
      RESA_ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                            ReadCredentialFile(options.tls_cert, "--tls-cert"));
      RESA_ASSIGN_OR_RETURN(ssl.pem_private_key,
                            ReadCredentialFile(options.tls_key, "--tls-key"));
    }
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
    creds = grpc::SslCredentials(ssl);
  } else {
    if (!options.tls_server_name.empty()) {
      return absl::InvalidArgumentError("--tls-server-name needs TLS (--tls or --tls-ca)");
    }
    if (!token.empty() && !IsLoopbackAddress(target)) {
      spdlog::warn("sending the bearer token to {} without TLS: anyone on the path can read it",
                   target);
    }
    creds = grpc::InsecureChannelCredentials();
  }
  if (creds == nullptr) return absl::InvalidArgumentError("gRPC refused the channel credentials");
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(target, creds, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot create a channel to ", target));
  }
  return channel;
}

void AddAuth(grpc::ClientContext& context, const ClientSecurityOptions& options) {
  absl::StatusOr<std::string> token = ResolveClientToken(options);
  if (!token.ok() || token->empty()) return;
  context.AddMetadata("authorization", absl::StrCat("Bearer ", *token));
}

}  // namespace resa::serving
