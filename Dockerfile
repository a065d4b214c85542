# Build stage. TLS goes through rustls, so the binary needs only glibc at run time.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Every member's sources: cargo loads the whole workspace, even to build one package.
# Only the product package is built below; the test bench's dependencies never are.
COPY crates ./crates
# The cache mounts keep the registry and incremental artifacts between builds; the binary
# is copied out because the target directory is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p metal3-fakenode --bin metal3-fakenode \
       -p metal3-fakenode-front --bin metal3-fakenode-front \
 && cp target/dist/metal3-fakenode /metal3-fakenode \
 && cp target/dist/metal3-fakenode-front /metal3-fakenode-front

# Same Debian release as the build stage, so the binary finds the glibc it was linked
# against.
FROM debian:bookworm-slim
# CA roots only for workload kubeconfigs that carry no CA of their own: the build stage's
# bundle, so the final image needs no package manager run.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /metal3-fakenode /usr/local/bin/metal3-fakenode
# The tenancy front (deploy/components/tenancy-front runs it from this image).
COPY --from=build /metal3-fakenode-front /usr/local/bin/metal3-fakenode-front
LABEL org.opencontainers.image.source="https://github.com/metal3-io/metal3-fakenode" \
      org.opencontainers.image.title="metal3-fakenode" \
      org.opencontainers.image.description="Fake kubelets for Metal3 / Cluster API scale tests: a Ready Node for every provisioned Metal3Machine" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric, so runAsNonRoot can verify it without a passwd entry.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/metal3-fakenode"]
CMD ["run"]
