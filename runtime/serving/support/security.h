// Transport security of the serving programs (DESIGN.md §6): loopback by default; TLS (server
// certificate, optionally verified client certificates) and a bearer token for anything else.
//
// Server side: parse flags into ServerSecurityOptions, call MakeServerCredentials (which refuses
// an exposed listener without protection), load the token with LoadServerToken, and call
// CheckBearerToken at the top of every handler of the client API.
// Client side: parse flags into ClientSecurityOptions, call MakeChannel, and call AddAuth on every
// ClientContext before the call (the token travels as "authorization: Bearer <token>" metadata on
// TLS and on insecure loopback channels alike, since gRPC refuses call credentials on insecure
// channels).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace CLI {
class App;
}

namespace resa::serving {

struct ServerSecurityOptions {
  // host:port (or unix:PATH) to listen on; anything but loopback needs TLS and authentication.
  std::string listen = "127.0.0.1:50051";
  std::string tls_cert;       // PEM certificate chain of the server
  std::string tls_key;        // PEM private key of tls_cert
  std::string tls_client_ca;  // PEM CA: clients must present a certificate it signed (mTLS)
  std::string token_file;     // a file holding the bearer token clients must send
  bool allow_insecure_remote = false;  // accept a non-loopback listener without TLS/auth
};

// Registers --listen, --tls-cert, --tls-key, --tls-client-ca, --token-file (also from the
// environment variable RESA_TOKEN_FILE) and --allow-insecure-remote, with help text.
void AddServerSecurityFlags(CLI::App& app, ServerSecurityOptions& options);

// Validates the options and builds the server credentials:
// - tls_cert and tls_key come together or not at all; tls_client_ca needs them;
// - every named file must exist, be readable and non-empty (the token file must hold a token);
// - a non-loopback `listen` needs TLS plus authentication (a token, or verified client
//   certificates) unless allow_insecure_remote is set.
// Errors are INVALID_ARGUMENT (bad combination) or NOT_FOUND / PERMISSION_DENIED (files), with
// the flag and the file named.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options);

// The bearer token from options.token_file with surrounding whitespace removed, or "" when no
// token file is configured (no authentication). An empty file is an error.
absl::StatusOr<std::string> LoadServerToken(const ServerSecurityOptions& options);

// True when `host_port` names only the local machine: 127.0.0.0/8, ::1 (also IPv4-mapped
// ::ffff:127.x), "localhost", or a unix socket ("unix:" / "unix-abstract:"). Accepts "host:port",
// "[v6]:port", a bare host, and the gRPC "ipv4:" / "ipv6:" / "dns:///" prefixes. Wildcards
// (0.0.0.0, [::], an empty host as in ":50051") are not loopback.
bool IsLoopbackAddress(std::string_view host_port);

// Checks the "authorization: Bearer <token>" metadata of a call against `expected` in constant
// time (for a given expected length). An empty `expected` means no authentication: always OK.
// Otherwise returns UNAUTHENTICATED saying whether the header is missing, malformed or wrong.
// Takes ServerContextBase so that sync (ServerContext) and callback (CallbackServerContext)
// handlers can both call it.
grpc::Status CheckBearerToken(const grpc::ServerContextBase& context, const std::string& expected);

struct ClientSecurityOptions {
  std::string tls_ca;           // PEM roots to verify the server with; setting it enables TLS
  std::string tls_cert;         // PEM client certificate (mTLS); enables TLS
  std::string tls_key;          // PEM private key of tls_cert
  std::string token;            // bearer token (prefer token_file: argv is visible to others)
  std::string token_file;       // a file holding the bearer token
  std::string tls_server_name;  // expected server name in its certificate (target override)
  bool tls = false;             // TLS with the system's roots (implied by tls_ca / tls_cert)
};

// Registers --tls, --tls-ca, --tls-cert, --tls-key, --token, --token-file (also the environment
// variables RESA_TOKEN and RESA_TOKEN_FILE) and --tls-server-name, with help text.
void AddClientSecurityFlags(CLI::App& app, ClientSecurityOptions& options);

// True when the options ask for a TLS channel.
bool UsesTls(const ClientSecurityOptions& options);

// A channel to `target` (host:port, or any gRPC target URI) with TLS when UsesTls(options), and
// send/receive message limits of `max_message_bytes` (<= 0: gRPC's defaults). Fails with
// INVALID_ARGUMENT / NOT_FOUND for unreadable files or inconsistent options (a key without a
// certificate, token and token_file both set, a TLS-only flag on a plaintext channel). Does not
// connect: the first call does.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ClientSecurityOptions& options,
                                                           int max_message_bytes);

// The bearer token to send: options.token, or the trimmed contents of options.token_file, or ""
// when neither is set.
absl::StatusOr<std::string> ResolveClientToken(const ClientSecurityOptions& options);

// Adds "authorization: Bearer <token>" to `context` when the options carry a token (see
// ResolveClientToken; a token file that cannot be read adds nothing, and MakeChannel has already
// reported it). Call before every RPC.
void AddAuth(grpc::ClientContext& context, const ClientSecurityOptions& options);

// Reads a whole file that holds credentials or certificates; `what` names it in errors
// ("--tls-cert"). Fails for a missing, unreadable or empty file.
absl::StatusOr<std::string> ReadCredentialFile(const std::string& path, std::string_view what);

}  // namespace resa::serving
