# The `portcullis` binary (gateway/host) in a slim Debian image.
#
#   docker build -t portcullis --build-arg PORTCULLIS_GIT_REV=$(git rev-parse --short=12 HEAD) .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9901:9901 \
#       -v /srv/portcullis:/etc/portcullis:ro portcullis
#
# /srv/portcullis holds portcullis.toml and the files it names (paths relative to it, e.g.
# secrets/audit.key); every option of `serve` can follow the image name (`--drain 20`).
# Other commands: `docker run --rm --entrypoint portcullis portcullis check`.
# tests/tests/packaging.rs checks this file against rust-toolchain.toml, .ci/run and the
# binary itself.

# The official Rust image at the toolchain rust-toolchain.toml pins, on Debian trixie.
FROM rust:1.95.0-trixie AS build
WORKDIR /src
# The host's build script builds the gateway component and the bundle's parts (its gateway,
# the plugin services, the plugin link)
# for wasm32-wasip2 and embeds them: the targets .ci/run installs.
COPY rust-toolchain.toml ./
RUN rustup target add wasm32-wasip2 wasm32-unknown-unknown
COPY . .
# .git is not copied (.dockerignore): `portcullis --version` names the commit passed here.
ARG PORTCULLIS_GIT_REV=unknown
# The build command of docs/deploy.md (and CI's `--locked`): target/release/portcullis.
RUN cargo build --release --locked -p portcullis

# The same Debian release as the builder: the glibc the binary was linked against.
FROM debian:trixie-slim
# The binary trusts the Mozilla roots compiled into it (webpki-roots), not the system store:
# ca-certificates is for tools run inside the image, not for a private CA of backends.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 portcullis \
    && useradd --system --uid 10001 --gid portcullis --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin portcullis \
    && mkdir -p /etc/portcullis /var/cache/portcullis \
    && chown portcullis:portcullis /var/cache/portcullis \
    && chmod 0700 /var/cache/portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
# `serve` reads these (a command-line option wins). Both listeners are loopback by default:
# in a container they listen on every interface; publish only 8080 to the network.
# XDG_CACHE_HOME: compiled wasm (plugins, `--engine component`) is cached in
# /var/cache/portcullis (private to the gateway's user: a cache others may write is not
# trusted); when it is not writable the host compiles at every start.
ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml \
    PORTCULLIS_LISTEN=0.0.0.0:8080 \
    PORTCULLIS_ADMIN=0.0.0.0:9901 \
    XDG_CACHE_HOME=/var/cache
USER 10001:10001
# The gateway, and the admin listener (/healthz, /readyz, /metrics).
EXPOSE 8080 9901
# SIGTERM (docker stop) drains in-flight requests for up to `--drain` seconds (30), then
# writes out queued audit records (up to 5 s): give `docker stop -t 40`.
ENTRYPOINT ["/usr/local/bin/portcullis", "serve"]
