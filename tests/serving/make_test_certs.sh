#!/usr/bin/env bash
# make_test_certs.sh DIR: throwaway TLS material for tests, made fresh at test time (never
# committed): a CA (ca.pem, ca.key), a server certificate for localhost / 127.0.0.1 signed by it
# (server.pem, server.key) and a client certificate (client.pem, client.key). EC P-256, valid one
# day.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 1 -subj /CN=resa-test-ca 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
printf 'extendedKeyUsage=clientAuth\n' >client.ext
for who in server client; do
  openssl req "${ec[@]}" -keyout "$who.key" -out "$who.csr" -subj "/CN=resa-test-$who" 2>/dev/null
  openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile "$who.ext" -out "$who.pem" 2>/dev/null
done
chmod 600 ./*.key
