# syntax=docker/dockerfile:1
# Build: a static musl binary, so the final image needs no libc.
FROM rust:1.95-alpine AS build
# Alpine package versions move with the index; the toolchain image is pinned.
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev openssl-dev openssl-libs-static pkgconfig perl make
WORKDIR /src
ENV OPENSSL_STATIC=1
# Dependencies first, for layer caching: the workspace's manifests with stub
# sources (bench/ is a workspace member and must be present).
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && cargo build --release --locked -p insights-remote \
 && rm -rf src target/release/deps/insights_remote* target/release/insights-remote*
COPY src ./src
RUN cargo build --release --locked -p insights-remote --bin insights-remote \
 && install -D -m 0555 target/release/insights-remote /out/insights-remote

# Run: distroless static, non-root, the binary only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/insights-remote /insights-remote
USER 65532:65532
EXPOSE 8888 8080 8081
ENTRYPOINT ["/insights-remote"]
